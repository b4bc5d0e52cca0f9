"""The words of quoting: reply headers, history markers, device footers and sign-offs in many languages.

Everything is matched on one line (or a few joined lines) at a time, with bounded quantifiers only,
so a pathological body (multi-megabyte lines of '>') stays linear.
"""

from __future__ import annotations

import re
from typing import Final

MAX_HEADER_CHARS: Final = 400  # a reply header longer than this is prose, not a header
MAX_HEADER_LINES: Final = 3  # clients wrap "On <date>, <name> <addr> wrote:" over at most 3 lines
MAX_DATED_HEADER_LINES: Final = 6
VERB_TAIL: Final = 80  # "…het volgende geschreven: ----" fits; a verb is never further from the end
MAX_SIGNATURE_LINES: Final = 10
MAX_SIGNATURE_LINE_CHARS: Final = 100
# A quote of at most this many lines with the author's answer below it is the point answered
# ("> Thursday?" / "Yes") and stays visible; a longer one is history with a bottom-posted answer.
MAX_ANSWERED_QUOTE_LINES: Final = 4

# Characters that draw nothing: zero-width spaces and joiners, bidi controls, the soft hyphen, word
# joiners and invisible operators, the byte-order mark. Analysis reads lines without them; the
# posted text loses them at line ends (inside a line a joiner may belong to an emoji or a script).
INVISIBLE: Final = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\u3164\ufeff\uffa0"
)
DROP_INVISIBLE = re.compile(f"[{INVISIBLE}]")
INVISIBLE_CHARS: Final = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f\ufeff"
)
# Left at the end of a reply by mail trackers and clients: Gmail's "ᐧ" mark, an object replacement
# character where an image was, a blank braille cell.
RESIDUE_MARKS: Final = "\u1427\ufffc\u2800"
RESIDUE_LINE = re.compile(f"^[\\s{INVISIBLE}{RESIDUE_MARKS}]*$")
TRAILING_INVISIBLE = re.compile(f"[\\s{INVISIBLE}]+$")
# A text/plain body written from HTML by a careless client: "&nbsp;" left as letters.
NBSP_ENTITY = re.compile(r"&(?:nbsp|#160|#x0*a0);", re.IGNORECASE)
QUOTE_LINE = re.compile(r"^[ \t]*>")
BANNER = re.compile(r"<{2,}\s*$")  # ">> click here <<": '>' used as an arrow, not a quote
# A horizontal rule drawn with punctuation; absorbed into the cut when it sits right above a marker.
RULE_LINE = re.compile(r"^[-_=*~—–#+.]{2,}$")
UNDERSCORES = re.compile(r"_{2,}")
WORD_CHAR = re.compile(r"\w")
HANDLE = re.compile(r"\s@\S+")  # "@stekosteko" after a name
LEADING_PUNCTUATION = re.compile(r"^\W+")
SIG_DELIMITER = re.compile(r"^--[ \t]?$")  # RFC 3676 "-- " (many clients drop the trailing space)

# Verbs that end an attribution line: "..., Bob <bob@x> wrote:" in the languages seen in real mail.
WROTE_VERBS: Final = (
    "wrote", "writes", "sent", "a écrit", "a ecrit", "écrit", "escribió", "escribio", "escreveu", "schrieb",
    "hat geschrieben", "geschrieben", "schreef", "het volgende geschreven", "napisał(a)", "napisała",
    "napisał", "napisal", "pisze", "skrev", "skriver", "ha scritto", "scrisse", "kirjoitti", "написал(а)",
    "написала", "написал", "написав", "пишет", "đã viết", "yazdı", "napsal", "napísal", "írta", "a scris",
    "έγραψε", "kirjutas", "rakstīja", "rašė", "napisao", "napisal(a)", "je napisal", "je napisao",
    "написа", "је написао", "пише", "menulis", "va escriure", "skrifaði", "kirjoitti viestin", "ने लिखा",
    "เขียนว่า", "كتب", "작성", "님이 작성", "schreef het volgende",
)  # fmt: skip
CJK_VERBS: Final = ("写道", "寫道", "のメッセージ", "님이 작성")
# Cheap test before the regex: the last word of the line must be the last word of a verb.
VERB_ENDINGS: Final = tuple({v.split()[-1] for v in WROTE_VERBS} | set(CJK_VERBS))
WROTE_END = re.compile(
    r"(?:(?<![\w-])(?:"
    + "|".join(re.escape(v).replace(r"\ ", r"\s+") for v in WROTE_VERBS)
    + ")|"
    + "|".join(CJK_VERBS)
    + r")\s*[:：]?\s*[-=*]*\s*$",
    re.IGNORECASE,
)
# German, Dutch and Scandinavian clients put the name after the verb: "Am 13.05.2026 schrieb Jan Jansen:".
WROTE_BEFORE_NAME = re.compile(
    r"(?<![\w-])(?:schrieb|skrev|schreef|kirjoitti)\s+[^:.!?]{1,120}[:：]\s*$", re.IGNORECASE
)
# Clients that put the verb before the date: "Bob <b@x> schrieb am Fr., 28. Apr. 2017 um 11:53 Uhr:",
# "Bob <b@x> ezt írta (időpont: 2017. ápr. 28., P, 11:53):", "Bob <b@x> va escriure el dia …:".
WROTE_ANYWHERE = re.compile(
    r"(?<![\w-])(?:" + "|".join(re.escape(v).replace(r"\ ", r"\s+") for v in WROTE_VERBS) + r")(?![\w-])",
    re.IGNORECASE,
)
# Gmail's older numeric form, in every locale: "2016-03-03 17:21 GMT+01:00 Some One <some@one.com>:".
DATE_LED = re.compile(
    r"^[\s>*_-]*(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})[,\s]+(?:kl\.?\s*)?"
    r"\d{1,2}[:.h]\d{2}(?::\d{2})?\s*(?:[ap]\.?m\.?\s*)?(?:(?:gmt|utc)?\s*[+-]\d{1,2}(?::?\d{2})?|gmt|utc|"
    r"[a-z]{2,5}t)?[,\s]",
    re.IGNORECASE,
)
# "… wrote:" with more text after it on the same line (a header glued to the first quoted line).
WROTE_COLON = re.compile(
    r"(?<![\w-])(?:" + "|".join(re.escape(v).replace(r"\ ", r"\s+") for v in WROTE_VERBS) + r")\s*[:：]",
    re.IGNORECASE,
)
DIGIT = re.compile(r"\d")
EMAIL = re.compile(r"[\w.+'-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
TIME_OR_YEAR = re.compile(r"\d{1,2}[:.h]\d{2}|(?<!\d)(?:19|20)\d{2}(?!\d)|\d{4}年")
# The first line of an attribution starts with a connective ("On", "Le", "Am", ...) or a date.
HEADER_OPENER = re.compile(
    r"^[\s>*_-]*(?:(?:on|le|el|am|op|w\s+dniu|dnia|den|på|il|in\s+data|em|vào|pada|dne|dňa|"
    r"kl\.|в|у|在|於)\s|\S{0,12}\s*\d)",
    re.IGNORECASE,
)
ON_DATE = re.compile(
    r"^[\s*_-]*on\s+(?:mon|tue|wed|thu|fri|sat|sun|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|\d)",
    re.IGNORECASE,
)
# "reply On Wed, Apr 4, 2012 at 3:59 PM, bob@example.com wrote:" — the client glued the attribution to
# the author's last line; split it so the author's words survive.
GLUED_ON = re.compile(
    r"^(?P<before>.*?\S)[ \t-]*(?P<header>\bOn\s+(?:mon|tue|wed|thu|fri|sat|sun|jan|feb|mar|apr|may|jun|jul"
    r"|aug|sep|oct|nov|dec|\d).{5,300})$",
    re.IGNORECASE,
)

# Outlook-style header blocks ("From: … Sent: … To: … Subject:") in the languages of the corpora.
START_FIELDS: Final = (
    r"from|de|von|van|da|od|fra|från|frá|lähettäjä|от|від|发件人|寄件者|寄件人|差出人|kimden|feladó|"
    r"message\s+du|date|datum|fecha|data|dato|дата|日期|sent|envoyé(?:\s+le)?|gesendet|verzonden|"
    r"inviato|enviado(?:\s+el)?|enviada|wysłano|wysłane|sendt|skickat|lähetetty|отправлено|надіслано|"
    r"发送时间|傳送時間|送信日時|gönderildi|odesláno|elküldve|보낸\s*사람|보낸\s*날짜|από|στάλθηκε|מאת|נשלח|"
    r"من|تم\s+الإرسال|de\s+la|trimis|dari|dikirim|từ|đã\s+gửi|จาก|ส่ง|प्रेषक|भेजा\s+गया|enviat|šalje|"
    r"poslano|pošiljatelj|изпратено|nuo|išsiųsta|nosūtīts|saatja|saadetud|odoslané|sent\s+at"
)
OTHER_FIELDS: Final = (
    r"to|cc|bcc|subject|reply-to|à|a|objet|sujet|copie\s+à|cc|an|betreff|kopie|aan|onderwerp|oggetto|"
    r"para|asunto|assunto|do|temat|dw|til|emne|kopi|till|ämne|kopia|vastaanottaja|aihe|кому|тема|"
    r"копия|收件人|主题|抄送|收件者|主旨|副本|宛先|件名|kime|konu|komu|předmět|címzett|tárgy|받는\s*사람|"
    r"참조|제목|προς|κοιν|θέμα|אל|עותק|נושא|إلى|نسخة|الموضوع|către|subiect|kepada|subjek|perihal|"
    r"đến|chủ\s+đề|ถึง|เรื่อง|प्रति|विषय|per\s+a|assumpte|prima|predmet|za|zadeva|до|относно|kam|"
    r"tēma|adressaat|teema|efni|til"
)
FIELD = re.compile(
    rf"^[ \t]*\*{{0,2}}[ \t]*(?:(?P<start>{START_FIELDS})|(?P<other>{OTHER_FIELDS}))[ \t]*\*{{0,2}}"
    r"[ \t]*[:：]",
    re.IGNORECASE,
)

INLINE_FIELD = re.compile(
    r"\s(?:from|date|sent|to|subject|cc|von|gesendet|betreff|datum|envoyé|objet|sujet|van|verzonden|"
    r"onderwerp|inviato|oggetto|enviado|asunto|para|fra|sendt|emne|från|skickat|ämne|temat|от|тема|кому)"
    r"[ \t]*[:：]",
    re.IGNORECASE,
)
ORIGINAL_NAMES: Final = (
    r"original\s+message|reply\s+message|original\s+e-?mail|ursprüngliche\s+nachricht|"
    r"antwort\s+nachricht|originalnachricht|oprindelig\s+meddelelse|oprindelig\s+besked|"
    r"opprinnelig\s+melding|message\s+d'origine|message\s+original|messaggio\s+originale|"
    r"mensaje\s+original|mensagem\s+original|oorspronkelijk\s+bericht|origineel\s+bericht|"
    r"originalmeddelande|ursprungligt\s+meddelande|alkuperäinen\s+viesti|исходное\s+сообщение|"
    r"оригинальное\s+сообщение|wiadomość\s+oryginalna|oryginalna\s+wiadomość|původní\s+zpráva|"
    r"eredeti\s+üzenet|原始邮件|原始郵件|元のメッセージ|원본\s+메시지|αρχικό\s+μήνυμα|הודעה\s+מקורית|"
    r"الرسالة\s+الأصلية|mesaj\s+original|orijinal\s+ileti|orijinal\s+mesaj|pesan\s+asli|thư\s+gốc|"
    r"ข้อความต้นฉบับ|missatge\s+original|izvorna\s+poruka|izvirno\s+sporočilo|оригинално\s+съобщение|"
    r"початкове\s+повідомлення|вихідне\s+повідомлення|pôvodná\s+správa|pradinis\s+laiškas|"
    r"sākotnējais\s+ziņojums|algne\s+sõnum|upprunaleg\s+skilaboð"
)
FORWARD_NAMES: Final = (
    r"forwarded\s+message|forwarded\s+e-?mail|message\s+transféré|message\s+transmis|"
    r"weitergeleitete\s+nachricht|doorgestuurd\s+bericht|mensaje\s+reenviado|messaggio\s+inoltrato|"
    r"mensagem\s+encaminhada|vidarebefordrat\s+meddelande|videresendt\s+meddelelse|"
    r"videresendt\s+melding|przekazana\s+wiadomość|wiadomość\s+przekazana\s+dalej|пересылаемое\s+сообщение|"
    r"пересланий\s+лист|转发的邮件|轉寄的郵件|転送されたメッセージ|전달된\s+메시지|välitetty\s+viesti|"
    r"iletilen\s+ileti|přeposlaná\s+zpráva|továbbított\s+üzenet|προωθημένο\s+μήνυμα|"
    r"הודעה\s+שהועברה|رسالة\s+مُ?عاد\s+توجيهها|mesaj\s+redirecționat|pesan\s+terusan|"
    r"thư\s+được\s+chuyển\s+tiếp|missatge\s+reenviat|mensaje\s+reenviado"
)
DASHES = r"[-=_*~—–]{2,}"
ORIGINAL_MARKER = re.compile(
    rf"^\s*(?:{DASHES}\s*(?:{ORIGINAL_NAMES})\s*[:：]?\s*{DASHES}|(?:{ORIGINAL_NAMES})\s*[:：]?\s*{DASHES})\s*$",
    re.IGNORECASE,
)
# A cover note that only says "here it is" (FYI, see below, pour info…): above a forwarded message it
# adds nothing of its own, and the forward is what the author sends, kept visible with the note.
FORWARD_COVER = re.compile(
    r"^\W*(?:fyi|f\.y\.i|for\s+your\s+information|see\s+below|please\s+see\s+below|see\s+attached|"
    r"forwarding|fwd|pour\s+info(?:rmation)?|voir\s+ci-dessous|ci-dessous|zur\s+info(?:rmation)?|"
    r"zur\s+kenntnis(?:nahme)?|siehe\s+unten|para\s+(?:tu|su)\s+información|ver\s+abajo|"
    r"per\s+(?:tua\s+)?informazione|vedi\s+sotto|ter\s+info(?:rmatie)?|zie\s+hieronder)\W*$",
    re.IGNORECASE,
)
FORWARD_MARKER = re.compile(
    rf"^\s*(?:{DASHES}\s*(?:{FORWARD_NAMES})\s*[:：]?\s*{DASHES}|"
    r"(?:begin\s+forwarded\s+message|début\s+du\s+message\s+réexpédié|anfang\s+der\s+weitergeleiteten\s+"
    r"nachricht|inizio\s+messaggio\s+inoltrato|comienzo\s+del\s+mensaje\s+reenviado|"
    r"início\s+da\s+mensagem\s+reencaminhada|início\s+da\s+mensagem\s+encaminhada|"
    r"inicio\s+del\s+mensaje\s+reenviado|begin\s+doorgestuurd\s+bericht|vidarebefordrat\s+brev|"
    r"start\s+på\s+videresendt\s+(?:besked|melding)|以下是转发的邮件|転送されたメッセージ)\s*[:：])\s*$",
    re.IGNORECASE,
)
# Help desks and forums write a marker into their notifications and read only what is above it.
REPLY_ABOVE = re.compile(
    r"(?:reply|respond|write|type|answer)\w*\s+(?:\w+\s+){0,3}above\s+this\s+line|"
    r"(?:oberhalb|über)\s+dieser\s+zeile|au-dessus\s+de\s+(?:cette|la)\s+ligne|"
    r"por\s+encima\s+de\s+esta\s+l[ií]nea|sopra\s+questa\s+riga|boven\s+deze\s+regel|"
    r"ovanför\s+denna\s+rad|over\s+denne\s+linje|powyżej\s+tej\s+linii",
    re.IGNORECASE,
)
# Notification digests append the conversation under a heading ("---\n*Previous Replies*").
HISTORY_HEADING = re.compile(
    r"^(?P<open>[*_#\s]*)(?:previous\s+(?:replies|messages|discussion|posts|conversation)|earlier\s+messages|"
    r"conversation\s+history|message\s+history|vorherige\s+antworten|frühere\s+nachrichten|"
    r"réponses\s+précédentes|messages\s+précédents|historique\s+de\s+la\s+conversation|"
    r"respuestas\s+anteriores|mensajes\s+anteriores|risposte\s+precedenti|eerdere\s+antwoorden|"
    r"vorige\s+berichten)[*_:\s]*$",
    re.IGNORECASE,
)
MAILING_LIST_FOOTER = re.compile(r"mailing\s+list\s*$|^to\s+unsubscribe\b", re.IGNORECASE)

# "Sent from my iPhone" and friends: a whole line, a short device name without sentence punctuation.
DEVICE_WORD = r"(?:[\w'’&+./@()-]{1,40}(?:<[^>\s]{1,300}>)?|<[^>\s]{1,300}>)"  # "TypeApp<http://…>"
DEVICE = rf"{DEVICE_WORD}(?:\s+{DEVICE_WORD}){{0,7}}"
SENT_FROM = (
    r"(?:sent|envoyé|enviado|gesendet|inviato|verzonden|verstuurd|skickat|sendt|lähetetty|wysłane|"
    r"odesláno|отправлено|надіслано)\s+"
    r"(?:from|via|with|using|de|depuis|à\s+partir\s+de|von|mit|über|da|dal|dal\s+mio|van|vanaf|met|"
    r"från|fra|med|z|ze|с|з|desde|do)\s+"
)
MOBILE_FOOTER = re.compile(
    r"^[\s–-]*(?:" + SENT_FROM + DEVICE + r"|"
    # Outlook mobile's footer in each language: "Get Outlook for iOS", "Obtener Outlook para iOS",
    # "Outlook für iOS herunterladen", "iOS 版 Outlook を入手", "获取适用于 iOS 的 Outlook".
    r"(?:get|download|télécharge[zr]?|obtenir|scarica|descarga[r]?|obtener|obter\s+o|baixe|baixar|"
    r"hol\s+dir|holen\s+sie\s+sich|pobierz(?:\s+aplikację)?|hämta|hent|lataa|получить|скачать)\s+outlook\s+"
    + DEVICE
    + r"|"
    r"outlook\s+(?:für|voor|för|for)\s+" + DEVICE_WORD + r"(?:\s+" + DEVICE_WORD + r")?\s+"
    r"(?:herunterladen|downloaden|beziehen|hämta|hent)|"
    r"(?:ios|android)\s*版\s*outlook\S{0,300}\s*を入手|获取适用于\s*(?:ios|android)\s*的\s*outlook\S{0,300}|"
    r"von\s+meinem\s+" + DEVICE + r"\s+gesendet|"
    r"[\w ]{1,30}から送信|发自我的\s*[\w ]{1,30}|從我的\s*[\w ]{1,30}\s*傳送|"
    r"sent\s+with\s+" + DEVICE + r"|via\s+(?:mobile|iphone|android)"
    r")\s*[.!]?\s*$",
    re.IGNORECASE,
)
# Longer carrier footers ("Sent via the Samsung Galaxy S® 5, an AT&T 4G LTE smartphone"): allowed
# when a device or mail app is named before any comma, so "Sent from my desk, is much easier than
# my mobile phone." stays a sentence.
DEVICE_FOOTER = re.compile(
    r"^[\s–-]*" + SENT_FROM + r"[^,\n]{0,40}?\b(?:iphone|ipad|ipod|android|blackberry|samsung|galaxy|"
    r"mobile|phone|smartphone|tablet|device|htc|nokia|huawei|xiaomi|pixel|motorola|outlook|mail|gmail|"
    r"yahoo|aol|airmail|mailbox|spark|proton\w*|bluemail|typeapp|handy|mobiltelefon|téléphone|"
    r"portable|móvil|celular|telefono|cellulare)\b.{0,80}$",
    re.IGNORECASE,
)

# Closing formulas that open a signature block ("Regards,\nJane Doe\nCEO"). "Thanks" and "Cheers"
# are deliberately absent: they usually carry meaning ("Thanks, that fixed it") and stay visible.
VALEDICTION = re.compile(
    r"^\s*(?:(?:(?:best|kind|warm|warmest|many|with\s+kind|with\s+best)\s+)?regards|"
    r"best|sincerely|yours\s+(?:truly|sincerely|faithfully)|respectfully|best\s+wishes|all\s+the\s+best|"
    r"cordialement|bien\s+cordialement|très\s+cordialement|bien\s+à\s+vous|salutations(?:\s+distinguées)?|"
    r"meilleures\s+salutations|sincères\s+salutations|mit\s+freundlichen\s+gr(?:ü|ue|u)(?:ß|ss)en|"
    r"freundliche\s+gr(?:ü|u)(?:ß|ss)e|viele\s+gr(?:ü|u)(?:ß|ss)e|beste\s+gr(?:ü|u)(?:ß|ss)e|"
    r"liebe\s+gr(?:ü|u)(?:ß|ss)e|herzliche\s+gr(?:ü|u)(?:ß|ss)e|mfg|lg|vg|"
    r"met\s+vriendelijke\s+groet(?:en)?|vriendelijke\s+groet(?:en)?|groeten|hartelijke\s+groet(?:en)?|"
    r"pozdrawiam(?:\s+serdecznie)?|z\s+poważaniem|z\s+powazaniem|serdecznie\s+pozdrawiam|"
    r"med\s+venlig(?:e)?\s+hilsen?|venlig\s+hilsen|hilsen|mvh|kh|med\s+vänlig(?:a)?\s+hälsning(?:ar)?|"
    r"vänliga\s+hälsningar|med\s+vennlig\s+hilsen|vennlig\s+hilsen|ystävällisin\s+terveisin|terveisin|"
    r"cordiali\s+saluti|distinti\s+saluti|saluti|un\s+saluto|atentamente|saludos(?:\s+cordiales)?|"
    r"un\s+saludo|cordialmente|atenciosamente|abraços|cumprimentos|с\s+уважением|"
    r"с\s+наилучшими\s+пожеланиями)"
    r"\s*[,.!]?\s*$",
    re.IGNORECASE,
)
# First words of a short closing ("Regards, Roman", "Thanks!") — used to tell a sign-off from an answer.
SIGNOFF_START = re.compile(
    r"^\s*(?:regards|best|kind\s+regards|thanks|thank\s+you|cheers|sincerely|cordialement|merci|"
    r"bien\s+à\s+vous|grüße|gruß|mfg|groeten|pozdrawiam|hilsen|mvh|saluti|saludos|abraços|спасибо)\b",
    re.IGNORECASE,
)
GREETING = re.compile(
    r"^\s*(?:hi|hello|hey|dear|good\s+(?:morning|afternoon|evening)|bonjour|bonsoir|salut|cher|chère|"
    r"hallo|liebe|lieber|sehr\s+geehrte|guten\s+(?:tag|morgen|abend)|moin|hej|hei|hola|estimad[oa]|"
    r"buongiorno|ciao|caro|cara|olá|oi|prezado|beste|geachte|dzień\s+dobry|cześć|witam|szanown[ya]|"
    r"привет|здравствуйте|добрый\s+день|уважаем)\b",
    re.IGNORECASE,
)
PHONE = re.compile(r"(?<![\w/])\+?\(?\d[\d\s().-]{5,22}\d(?![\w/])")
URL = re.compile(r"https?://|www\.", re.IGNORECASE)
CONTACT_LABEL = re.compile(
    r"^\W{0,3}(?:skype|linkedin|twitter|github|tel|phone|mobile|mob|cell|fax|office|direct|tél|"
    r"téléphone|portable|mobil|handy|telefon)\b",
    re.IGNORECASE,
)
ABBREVIATION = re.compile(r"(?:\w+\.){2,}|[A-Z][a-z]{0,2}\.")
POSTSCRIPT = re.compile(r"^\s*p\.?\s?s\.?\b", re.IGNORECASE)
