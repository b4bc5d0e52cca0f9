"""The reason catalogue: every reason code mailbridge records, with what it means and what to do.

The inbound log, the quarantine, attachment verdicts and deliveries store short stable codes
(``reply_user_mismatch``, ``auth_not_aligned``…). An operator asked "my client says she replied"
needs a sentence, not a code: the console shows these, and ``docs/reasons.md`` is generated from
this module (``python -m mailbridge.reasons > docs/reasons.md``, ``make reasons``). A test scans the
code for every reason it can record and fails when one is missing here, and when the document is
out of date.

Each entry: the code, the group it belongs to, then (explanation, what to do) in English and French.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    group: str
    en: tuple[str, str]
    fr: tuple[str, str]

    def explain(self, locale: str) -> tuple[str, str]:
        return self.fr if locale.lower().startswith("fr") else self.en


GROUPS: dict[str, tuple[str, str]] = {
    "accepted": ("Accepted and posted", "Accepté et publié"),
    "dropped": ("Accepted, never posted", "Accepté, jamais publié"),
    "quarantined": ("Held in quarantine", "Retenu en quarantaine"),
    "refused": ("Refused (5xx)", "Refusé (5xx)"),
    "recipient": ("Decided at RCPT (the address)", "Décidé au RCPT (l'adresse)"),
    "policy": ("Refused by the conversation's rules", "Refusé par les règles de la conversation"),
    "deferred": ("Deferred (4xx): the sender retries", "Différé (4xx) : l'expéditeur réessaie"),
    "classification": ("How a message was classified", "Comment un message a été classé"),
    "attachment": ("Attachment withheld", "Pièce jointe retenue"),
    "outbound": ("Deliveries", "Envois"),
    "quarantine_state": ("Quarantine decisions", "Décisions de quarantaine"),
}

_FIX_DIRECTORY = (
    "Check the client's addresses in the directory (the messaging app); once fixed, reprocess the message.",
    "Vérifiez les adresses du client dans l'annuaire (l'application) ; une fois corrigées, retraitez le message.",
)
_NOTHING = ("Nothing to do.", "Rien à faire.")
_RETRY = (
    "Nothing to do unless it repeats: the sender's server retries. If it repeats, check the disk, the database and /readyz.",
    "Rien à faire sauf répétition : le serveur de l'expéditeur réessaie. Sinon, vérifiez le disque, la base et /readyz.",
)

_ENTRIES: tuple[tuple[str, str, str, str, str, str], ...] = (
    # code, group, explanation EN, what to do EN, explanation FR, what to do FR
    # ---- accepted -------------------------------------------------------------------------------
    (
        "posted",
        "accepted",
        "The reply or enquiry was posted into its conversation and the participants were notified.",
        _NOTHING[0],
        "La réponse ou la demande a été publiée dans sa conversation et les participants prévenus.",
        _NOTHING[1],
    ),
    (
        "released_by_staff",
        "accepted",
        "An operator released the message from quarantine; it was posted then.",
        _NOTHING[0],
        "Un opérateur a libéré le message de la quarantaine ; il a été publié à ce moment.",
        _NOTHING[1],
    ),
    (
        "discarded_by_staff",
        "quarantine_state",
        "An operator discarded the held message; its raw copy was deleted.",
        _NOTHING[0],
        "Un opérateur a écarté le message retenu ; sa copie brute a été supprimée.",
        _NOTHING[1],
    ),
    # ---- dropped (250, never posted) ------------------------------------------------------------
    (
        "auto_reply_dropped",
        "dropped",
        "An automatic reply (out of office, vacation, read receipt, mailing list) reached a reply address; it is never posted nor answered (RFC 3834).",
        "Nothing to do; the client's real answer will follow.",
        "Une réponse automatique (absence, vacances, accusé de lecture, liste de diffusion) est arrivée ; elle n'est ni publiée ni répondue (RFC 3834).",
        "Rien à faire ; la vraie réponse du client suivra.",
    ),
    (
        "loop_detected",
        "dropped",
        "The message looks like our own mail coming back (our loop header, our own address, or more than 30 Received fields).",
        "If it repeats, look for a forward that sends notifications back to a reply address.",
        "Le message ressemble à notre propre courrier qui revient (en-tête de boucle, notre adresse, ou plus de 30 champs Received).",
        "Si cela se répète, cherchez un transfert qui renvoie les notifications vers une adresse de réponse.",
    ),
    (
        "duplicate_suppressed",
        "dropped",
        "The same reply arrived twice (same token, Message-ID and body); it was posted once.",
        _NOTHING[0],
        "La même réponse est arrivée deux fois (même jeton, Message-ID et corps) ; elle a été publiée une fois.",
        _NOTHING[1],
    ),
    (
        "operator_mail",
        "dropped",
        "Mail to postmaster@ or abuse@ was forwarded to the practice's operator address, never into a conversation.",
        "Read it in the operator mailbox (setting operator_address).",
        "Le courrier à postmaster@ ou abuse@ a été transféré à l'adresse opérateur du cabinet, jamais dans une conversation.",
        "Lisez-le dans la boîte opérateur (réglage operator_address).",
    ),
    # ---- bounces ----------------------------------------------------------------------------------
    (
        "verp_bounce",
        "dropped",
        "A delivery failure report came back for one of our notifications (to its signed bounce address).",
        "See Deliveries: the recipient's address may now be suppressed.",
        "Un avis de non-remise est revenu pour une de nos notifications (à son adresse de retour signée).",
        "Voir Envois : l'adresse du destinataire est peut-être maintenant suspendue.",
    ),
    (
        "dsn",
        "classification",
        "A standard delivery status notification (RFC 3464) for mail we sent.",
        "See Deliveries for the recipient and the diagnostic.",
        "Un avis d'état de remise standard (RFC 3464) pour un courrier envoyé.",
        "Voir Envois pour le destinataire et le diagnostic.",
    ),
    (
        "flufl_bounce",
        "classification",
        "A non-standard bounce recognised by its provider's format.",
        "See Deliveries for the recipient.",
        "Un rejet non standard reconnu au format de son fournisseur.",
        "Voir Envois pour le destinataire.",
    ),
    (
        "mailer_daemon",
        "classification",
        "A bounce recognised by its sender (MAILER-DAEMON, postmaster).",
        "See Deliveries for the recipient.",
        "Un rejet reconnu à son expéditeur (MAILER-DAEMON, postmaster).",
        "Voir Envois pour le destinataire.",
    ),
    (
        "bounce_subject",
        "classification",
        "A bounce recognised by its subject (Undeliverable, Delivery Status Notification…).",
        "See Deliveries for the recipient.",
        "Un rejet reconnu à son objet (Undeliverable, Non remis…).",
        "Voir Envois pour le destinataire.",
    ),
    (
        "null_sender",
        "classification",
        "A message with an empty envelope sender (<>), which only reports and bounces use.",
        _NOTHING[0],
        "Un message à l'expéditeur d'enveloppe vide (<>), réservé aux avis et rejets.",
        _NOTHING[1],
    ),
    (
        "report",
        "classification",
        "A read receipt or feedback report (RFC 8098, RFC 5965), treated as an automatic reply.",
        _NOTHING[0],
        "Un accusé de lecture ou un rapport de retour (RFC 8098, RFC 5965), traité comme réponse automatique.",
        _NOTHING[1],
    ),
    (
        "ooo_subject",
        "classification",
        "An out-of-office reply recognised by its subject.",
        _NOTHING[0],
        "Une réponse d'absence reconnue à son objet.",
        _NOTHING[1],
    ),
    (
        "own_loop_header",
        "classification",
        "The message carries our own loop header: it is our mail coming back.",
        _NOTHING[0],
        "Le message porte notre en-tête de boucle : c'est notre courrier qui revient.",
        _NOTHING[1],
    ),
    (
        "own_address",
        "classification",
        "The message is from our own notification address or reply domain.",
        _NOTHING[0],
        "Le message vient de notre adresse de notification ou de notre domaine de réponse.",
        _NOTHING[1],
    ),
    (
        "human",
        "classification",
        "A message written by a person.",
        _NOTHING[0],
        "Un message écrit par une personne.",
        _NOTHING[1],
    ),
    (
        "classify_error",
        "classification",
        "The classifier could not read the headers; the message was treated as written by a person.",
        _NOTHING[0],
        "Le classement n'a pas pu lire les en-têtes ; le message a été traité comme écrit par une personne.",
        _NOTHING[1],
    ),
    # ---- quarantine ------------------------------------------------------------------------------
    (
        "auth_not_aligned",
        "quarantined",
        "The reply is to a confidential or private conversation (or the practice requires it), and the sender's domain did not prove it sent it (no aligned DKIM or SPF pass).",
        "Read it; release it if it is genuine, discard it otherwise. Ask the client's provider to sign mail (DKIM) if it keeps happening.",
        "La réponse vise une conversation confidentielle ou privée (ou le cabinet l'exige), et le domaine de l'expéditeur n'a pas prouvé l'envoi (ni DKIM ni SPF aligné).",
        "Lisez-la ; libérez-la si elle est authentique, écartez-la sinon. Si cela se répète, le fournisseur du client devrait signer (DKIM).",
    ),
    (
        "unknown_sender",
        "quarantined",
        "Someone who is not a client of the practice wrote to a practice address. Held when the address triages strangers, refused otherwise.",
        "Release it to a new contact if it is a genuine enquiry, or to an existing client who wrote from another address; discard spam.",
        "Une personne qui n'est pas cliente a écrit à une adresse du cabinet. Retenu si l'adresse trie les inconnus, refusé sinon.",
        "Libérez-le vers un nouveau contact si c'est une vraie demande, ou vers le client qui a écrit d'une autre adresse ; écartez le spam.",
    ),
    # ---- refused: the message --------------------------------------------------------------------
    (
        "message_too_big",
        "refused",
        "The message is larger than the practice's limit; the sender was told the limit.",
        "Ask the sender to send smaller files or several emails, or raise attachment_max_bytes.",
        "Le message dépasse la limite du cabinet ; l'expéditeur a reçu la limite.",
        "Demandez des fichiers plus petits ou plusieurs e-mails, ou relevez attachment_max_bytes.",
    ),
    (
        "size_exceeded",
        "refused",
        "The transfer went past the size the server announced, and was cut off.",
        "Ask the sender to send smaller files.",
        "Le transfert a dépassé la taille annoncée par le serveur et a été interrompu.",
        "Demandez des fichiers plus petits.",
    ),
    (
        "line_too_long",
        "refused",
        "A line of the message was longer than SMTP allows (RFC 5321 §4.5.3.1.6).",
        "The sender's software is faulty; ask them to send it from another program.",
        "Une ligne du message dépassait la longueur permise par SMTP (RFC 5321 §4.5.3.1.6).",
        "Le logiciel de l'expéditeur est défaillant ; qu'il envoie depuis un autre programme.",
    ),
    (
        "bare_line_ending",
        "refused",
        "The message contains a bare CR or LF, a sign of SMTP smuggling; it is refused.",
        "Nothing to do unless a real correspondent is affected: their software must send CRLF line endings.",
        "Le message contient un CR ou LF isolé, signe de contrebande SMTP ; il est refusé.",
        "Rien à faire sauf si un vrai correspondant est touché : son logiciel doit envoyer des fins de ligne CRLF.",
    ),
    (
        "mime_bomb",
        "refused",
        "The message's structure is too complex to be read safely.",
        "Nothing to do; ask the sender to send a simpler message if it was genuine.",
        "La structure du message est trop complexe pour être lue sans risque.",
        "Rien à faire ; s'il était authentique, demandez un message plus simple.",
    ),
    (
        "mime_depth",
        "refused",
        "The message nests more than 20 levels of parts.",
        "Ask the sender to send the files directly, not inside forwarded messages.",
        "Le message imbrique plus de 20 niveaux de parties.",
        "Demandez d'envoyer les fichiers directement, pas dans des messages transférés.",
    ),
    (
        "mime_parts",
        "refused",
        "The message has more than 1,000 parts.",
        "Ask the sender to send fewer files per email.",
        "Le message a plus de 1 000 parties.",
        "Demandez moins de fichiers par e-mail.",
    ),
    (
        "header_size",
        "refused",
        "The message's headers are larger than 256 KB.",
        "Nothing to do; genuine mail never has such headers.",
        "Les en-têtes du message dépassent 256 Ko.",
        "Rien à faire ; un vrai courrier n'a jamais de tels en-têtes.",
    ),
    (
        "header_count",
        "refused",
        "The message has more than 1,000 header fields.",
        "Nothing to do; genuine mail never has so many.",
        "Le message a plus de 1 000 champs d'en-tête.",
        "Rien à faire ; un vrai courrier n'en a jamais autant.",
    ),
    (
        "nul_in_header",
        "refused",
        "A header contains a NUL byte.",
        "Nothing to do; this is malformed or hostile mail.",
        "Un en-tête contient un octet NUL.",
        "Rien à faire ; c'est un courrier malformé ou hostile.",
    ),
    (
        "loop_received",
        "refused",
        "The message passed through more than 30 mail servers: a loop between relays.",
        "Look for forwards between mail systems that send the message round in circles.",
        "Le message est passé par plus de 30 serveurs : une boucle entre relais.",
        "Cherchez des transferts entre systèmes de messagerie qui tournent en rond.",
    ),
    (
        "parse_failed",
        "refused",
        "The message could not be read as an email.",
        "Nothing to do unless it repeats for one sender; then ask them to send it again.",
        "Le message n'a pas pu être lu comme un e-mail.",
        "Rien à faire sauf répétition pour un expéditeur ; demandez-lui de le renvoyer.",
    ),
    (
        "from_ambiguous",
        "refused",
        "The message has no From address, or more than one.",
        "Nothing to do; genuine mail has exactly one sender.",
        "Le message n'a pas d'adresse From, ou en a plusieurs.",
        "Rien à faire ; un vrai courrier a exactement un expéditeur.",
    ),
    (
        "reply_user_mismatch",
        "refused",
        "The reply came from an address that is not one of the addresses of the person the reply address was issued to.",
        _FIX_DIRECTORY[0],
        "La réponse vient d'une adresse qui n'est pas celle de la personne à qui l'adresse de réponse a été donnée.",
        _FIX_DIRECTORY[1],
    ),
    (
        "token_revoked",
        "refused",
        "The reply address no longer works: the person left the conversation, or it was deleted.",
        "Nothing to do; the person can write through the application.",
        "L'adresse de réponse ne fonctionne plus : la personne a quitté la conversation, ou elle a été supprimée.",
        "Rien à faire ; la personne peut écrire depuis l'application.",
    ),
    (
        "conversation_missing",
        "refused",
        "The conversation the reply was for no longer exists.",
        "Nothing to do.",
        "La conversation visée par la réponse n'existe plus.",
        _NOTHING[1],
    ),
    (
        "staff_to_route",
        "refused",
        "A staff member wrote to a practice address by email; staff post through the application.",
        "Tell the staff member to use the application.",
        "Un membre du personnel a écrit à une adresse du cabinet par e-mail ; le personnel publie depuis l'application.",
        "Dites-lui d'utiliser l'application.",
    ),
    (
        "dmarc_fail",
        "refused",
        "The sender's domain publishes a DMARC policy and this message failed it: it was probably forged.",
        "Nothing to do if forged. If genuine, the client's provider must fix its SPF or DKIM.",
        "Le domaine de l'expéditeur publie une politique DMARC et ce message y échoue : il est probablement usurpé.",
        "Rien à faire s'il est usurpé. S'il est authentique, le fournisseur du client doit corriger SPF ou DKIM.",
    ),
    (
        "empty_message",
        "refused",
        "After removing the quoted history and signature, the message had no text and no attachment.",
        "The sender got a notice asking to write their message; nothing else to do.",
        "Une fois l'historique cité et la signature retirés, le message n'avait ni texte ni pièce jointe.",
        "L'expéditeur a reçu un avis l'invitant à écrire son message ; rien d'autre à faire.",
    ),
    (
        "too_many_attachments",
        "refused",
        "The message carried more attachments than the practice allows.",
        "The sender got a notice; raise attachment_max_count if the limit is too low.",
        "Le message portait plus de pièces jointes que le cabinet n'en autorise.",
        "L'expéditeur a reçu un avis ; relevez attachment_max_count si la limite est trop basse.",
    ),
    (
        "route_empty",
        "refused",
        "The practice address has no active staff to open a conversation with.",
        "Edit the route (Routes) so it names staff or roles that exist.",
        "L'adresse du cabinet n'a aucun membre actif avec qui ouvrir une conversation.",
        "Modifiez la route (Routes) pour nommer du personnel ou des rôles existants.",
    ),
    (
        "no_envelope_recipient",
        "refused",
        "A message fetched over IMAP named no address of this practice (Delivered-To, X-Original-To, or the mailbox's routing address).",
        "Set the mailbox's routing address (Routes and mailboxes).",
        "Un message relevé par IMAP ne nommait aucune adresse du cabinet (Delivered-To, X-Original-To ou l'adresse de routage).",
        "Réglez l'adresse de routage de la boîte (Routes et boîtes).",
    ),
    (
        "other_practice",
        "refused",
        "A message fetched over IMAP was addressed to another practice.",
        "Check which mailbox receives this mail.",
        "Un message relevé par IMAP était adressé à un autre cabinet.",
        "Vérifiez quelle boîte reçoit ce courrier.",
    ),
    # ---- refused at RCPT -------------------------------------------------------------------------
    (
        "address_malformed",
        "recipient",
        "The recipient address is not a valid address.",
        _NOTHING[0],
        "L'adresse du destinataire n'est pas valide.",
        _NOTHING[1],
    ),
    (
        "relay_denied",
        "recipient",
        "The recipient's domain is not served by mailbridge.",
        "Nothing to do, unless it is a practice's domain: then check its reply_domain and routes.",
        "Le domaine du destinataire n'est pas servi par mailbridge.",
        "Rien à faire, sauf s'il s'agit d'un domaine du cabinet : vérifiez reply_domain et les routes.",
    ),
    (
        "unknown_route",
        "recipient",
        "The address is on a practice's domain but is not one of its practice addresses.",
        "Create the route (Routes) if the address should receive mail.",
        "L'adresse est sur un domaine du cabinet mais n'est pas une de ses adresses.",
        "Créez la route (Routes) si l'adresse doit recevoir du courrier.",
    ),
    (
        "verp_invalid",
        "recipient",
        "A bounce address whose signature does not match: forged, or altered on the way.",
        _NOTHING[0],
        "Une adresse de retour dont la signature ne correspond pas : forgée ou altérée.",
        _NOTHING[1],
    ),
    (
        "token_invalid",
        "recipient",
        "The reply address is unknown, malformed, revoked or another practice's (the same answer for all).",
        "Nothing to do; if a client keeps using an old address, they can write from the application.",
        "L'adresse de réponse est inconnue, malformée, révoquée ou d'un autre cabinet (même réponse pour tous).",
        "Rien à faire ; si un client réutilise une ancienne adresse, il peut écrire depuis l'application.",
    ),
    (
        "reply_by_email_disabled",
        "recipient",
        "The practice has turned replies by email off.",
        "Turn reply_by_email on in the practice's settings if replies should be accepted.",
        "Le cabinet a désactivé les réponses par e-mail.",
        "Activez reply_by_email dans les réglages du cabinet pour accepter les réponses.",
    ),
    (
        "token_ok",
        "recipient",
        "Accepted at RCPT: a valid reply address of this practice.",
        _NOTHING[0],
        "Accepté au RCPT : une adresse de réponse valide du cabinet.",
        _NOTHING[1],
    ),
    (
        "route",
        "recipient",
        "Accepted at RCPT: one of the practice's addresses (a route).",
        _NOTHING[0],
        "Accepté au RCPT : une des adresses du cabinet (une route).",
        _NOTHING[1],
    ),
    (
        "operator",
        "recipient",
        "Accepted at RCPT: postmaster@ or abuse@ of a practice's domain (RFC 5321 §4.5.1).",
        _NOTHING[0],
        "Accepté au RCPT : postmaster@ ou abuse@ d'un domaine du cabinet (RFC 5321 §4.5.1).",
        _NOTHING[1],
    ),
    (
        "bounce",
        "recipient",
        "Accepted at RCPT: the signed bounce address of one of our notifications.",
        _NOTHING[0],
        "Accepté au RCPT : l'adresse de retour signée d'une de nos notifications.",
        _NOTHING[1],
    ),
    # ---- refused by policy -----------------------------------------------------------------------
    (
        "conversation_deleted",
        "policy",
        "The conversation was deleted.",
        _NOTHING[0],
        "La conversation a été supprimée.",
        _NOTHING[1],
    ),
    (
        "not_participant",
        "policy",
        "The sender is not (or no longer) a participant of the conversation.",
        "Add them to the conversation in the application if they should take part, then reprocess.",
        "L'expéditeur n'est pas (ou plus) participant de la conversation.",
        "Ajoutez-le à la conversation dans l'application s'il doit y prendre part, puis retraitez.",
    ),
    (
        "not_following_company",
        "policy",
        "The staff member does not follow the conversation's company.",
        "Make them follow the company in the application if they should see it.",
        "Le membre du personnel ne suit pas l'entreprise de la conversation.",
        "Faites-lui suivre l'entreprise dans l'application s'il doit la voir.",
    ),
    (
        "not_company_client",
        "policy",
        "The client is not a client of the conversation's company.",
        "Check the client's companies in the application.",
        "Le client n'est pas client de l'entreprise de la conversation.",
        "Vérifiez les entreprises du client dans l'application.",
    ),
    (
        "account_inactive",
        "policy",
        "The staff member's account is inactive.",
        "Reactivate the account in the application if needed.",
        "Le compte du membre du personnel est inactif.",
        "Réactivez le compte dans l'application si besoin.",
    ),
    (
        "direct_channel_closed",
        "policy",
        "The direct channel between these two staff members was closed.",
        "Nothing to do; they can reopen it in the application.",
        "Le canal direct entre ces deux membres du personnel a été fermé.",
        "Rien à faire ; ils peuvent le rouvrir dans l'application.",
    ),
    (
        "friendship_not_accepted",
        "policy",
        "The direct channel was never accepted by both staff members.",
        "Nothing to do.",
        "Le canal direct n'a jamais été accepté par les deux membres du personnel.",
        _NOTHING[1],
    ),
    (
        "group_conversation",
        "policy",
        "The conversation includes several clients, so it takes no replies by email (group privacy).",
        "The sender got a notice; they can answer in the application.",
        "La conversation réunit plusieurs clients : elle n'accepte pas de réponse par e-mail (confidentialité).",
        "L'expéditeur a reçu un avis ; il peut répondre dans l'application.",
    ),
    (
        "inactive_client",
        "policy",
        "The client's account is inactive, so they cannot write to a provider.",
        "Reactivate the client in the application if they should be able to write, then reprocess.",
        "Le compte du client est inactif : il ne peut pas écrire à un praticien.",
        "Réactivez le client dans l'application s'il doit pouvoir écrire, puis retraitez.",
    ),
    (
        "internal_requires_staff",
        "policy",
        "Only staff may write internal notes.",
        _NOTHING[0],
        "Seul le personnel peut écrire des notes internes.",
        _NOTHING[1],
    ),
    (
        "body_too_short",
        "policy",
        "The reply was shorter than the practice's minimum length.",
        "The sender got a notice; lower min_body_chars if the limit is too strict.",
        "La réponse était plus courte que le minimum du cabinet.",
        "L'expéditeur a reçu un avis ; baissez min_body_chars si la limite est trop stricte.",
    ),
    (
        "not_allowed",
        "policy",
        "No rule allows this sender to read or post here.",
        "Check the conversation's kind and participants in the application.",
        "Aucune règle n'autorise cet expéditeur à lire ou publier ici.",
        "Vérifiez le type et les participants de la conversation dans l'application.",
    ),
    (
        "allowed",
        "policy",
        "A rule allowed the sender to post.",
        _NOTHING[0],
        "Une règle a autorisé l'expéditeur à publier.",
        _NOTHING[1],
    ),
    (
        "allowed_via_favourite",
        "policy",
        "The client may post because they follow the conversation's company.",
        _NOTHING[0],
        "Le client peut publier car il suit l'entreprise de la conversation.",
        _NOTHING[1],
    ),
    # ---- deferred --------------------------------------------------------------------------------
    (
        "tempfail_disk",
        "deferred",
        "The message could not be written to disk; the sender was asked to retry (451).",
        _RETRY[0],
        "Le message n'a pas pu être écrit sur le disque ; l'expéditeur doit réessayer (451).",
        _RETRY[1],
    ),
    (
        "tempfail_db",
        "deferred",
        "The database failed while handling the message; the sender was asked to retry (451).",
        _RETRY[0],
        "La base de données a échoué pendant le traitement ; l'expéditeur doit réessayer (451).",
        _RETRY[1],
    ),
    (
        "internal_error",
        "deferred",
        "An unexpected error; the sender was asked to retry (451). The traceback is in the log.",
        "Look for pipeline_unexpected_error in the log and report it.",
        "Une erreur inattendue ; l'expéditeur doit réessayer (451). La trace est dans le journal.",
        "Cherchez pipeline_unexpected_error dans le journal et signalez-le.",
    ),
    (
        "auth_temperror",
        "deferred",
        "DNS did not answer while checking the sender (DKIM, SPF, DMARC); the sender was asked to retry (451).",
        "Nothing to do unless it lasts: then check the resolver (dns_nameservers).",
        "Le DNS n'a pas répondu pendant la vérification de l'expéditeur ; il doit réessayer (451).",
        "Rien à faire sauf si cela dure : vérifiez alors le résolveur (dns_nameservers).",
    ),
    # ---- attachments (per file, in the inbound detail) ------------------------------------------
    (
        "attachment_withheld",
        "attachment",
        "The message was posted, but some attachments were not accepted; a visible line says so.",
        "The sender got a notice naming the files and why.",
        "Le message a été publié, mais certaines pièces jointes ont été refusées ; une ligne visible l'indique.",
        "L'expéditeur a reçu un avis nommant les fichiers et la raison.",
    ),
    (
        "empty",
        "attachment",
        "The file was empty.",
        _NOTHING[0],
        "Le fichier était vide.",
        _NOTHING[1],
    ),
    (
        "too_large",
        "attachment",
        "The file was larger than the practice allows.",
        "Raise attachment_max_bytes if the limit is too low.",
        "Le fichier dépassait la taille permise.",
        "Relevez attachment_max_bytes si la limite est trop basse.",
    ),
    (
        "executable",
        "attachment",
        "The file is a program or a script.",
        _NOTHING[0],
        "Le fichier est un programme ou un script.",
        _NOTHING[1],
    ),
    (
        "active_content",
        "attachment",
        "The file is a web page or an SVG image, which can carry scripts.",
        "Ask for a PDF or an image instead.",
        "Le fichier est une page web ou une image SVG, qui peuvent contenir des scripts.",
        "Demandez un PDF ou une image à la place.",
    ),
    (
        "macro_document",
        "attachment",
        "The document contains macros.",
        "Ask for the document saved without macros, or as PDF.",
        "Le document contient des macros.",
        "Demandez le document sans macros, ou en PDF.",
    ),
    (
        "type_not_allowed",
        "attachment",
        "The file's type is not on the list of accepted types.",
        "Ask for a PDF, an image or an office document.",
        "Le type du fichier n'est pas dans la liste des types acceptés.",
        "Demandez un PDF, une image ou un document bureautique.",
    ),
    (
        "type_mismatch",
        "attachment",
        "The file's content does not match its name or declared type.",
        "Ask the sender to send the file again as it is.",
        "Le contenu du fichier ne correspond pas à son nom ou à son type.",
        "Demandez de renvoyer le fichier tel quel.",
    ),
    # ---- deliveries ------------------------------------------------------------------------------
    (
        "pending",
        "outbound",
        "Waiting to be sent (or to be retried).",
        _NOTHING[0],
        "En attente d'envoi (ou de nouvel essai).",
        _NOTHING[1],
    ),
    (
        "deferred",
        "outbound",
        "The receiving server answered with a temporary error; it will be retried with increasing delays.",
        "Nothing to do unless it lasts; the last answer says why.",
        "Le serveur destinataire a répondu par une erreur temporaire ; nouvel essai avec des délais croissants.",
        "Rien à faire sauf si cela dure ; la dernière réponse dit pourquoi.",
    ),
    (
        "sent",
        "outbound",
        "Handed to the smarthost (or written to the outbox folder).",
        _NOTHING[0],
        "Remis au relais (ou écrit dans le dossier outbox).",
        _NOTHING[1],
    ),
    (
        "failed",
        "outbound",
        "Refused for good by the receiving server, or cancelled (message deleted, recipient removed).",
        "Read the last answer; fix the recipient's address in the directory if it is wrong.",
        "Refusé définitivement par le serveur destinataire, ou annulé (message supprimé, destinataire retiré).",
        "Lisez la dernière réponse ; corrigez l'adresse du destinataire dans l'annuaire si elle est fausse.",
    ),
    (
        "expired",
        "outbound",
        "Still undelivered when its lifetime ran out (outbox_lifetime_seconds).",
        "Check the smarthost and the recipient's domain.",
        "Toujours pas remis à la fin de sa durée de vie (outbox_lifetime_seconds).",
        "Vérifiez le relais et le domaine du destinataire.",
    ),
    (
        "suppressed",
        "outbound",
        "Not sent: the address bounced before and is suppressed.",
        "Fix the address in the directory, or un-suppress it (Deliveries) once it works again.",
        "Non envoyé : l'adresse a déjà été rejetée et est suspendue.",
        "Corrigez l'adresse dans l'annuaire, ou levez la suspension (Envois) quand elle fonctionne.",
    ),
    (
        "address_suppressed",
        "outbound",
        "A notification was not written for this recipient: their address is suppressed after bounces.",
        "Fix the address in the directory, or un-suppress it (Deliveries).",
        "Aucune notification pour ce destinataire : son adresse est suspendue après des rejets.",
        "Corrigez l'adresse dans l'annuaire, ou levez la suspension (Envois).",
    ),
    (
        "held",
        "quarantine_state",
        "Waiting in quarantine for an operator's decision.",
        "Release or discard it (Quarantine).",
        "En attente en quarantaine d'une décision d'opérateur.",
        "Libérez-le ou écartez-le (Quarantaine).",
    ),
    (
        "released",
        "quarantine_state",
        "Released by an operator and posted.",
        _NOTHING[0],
        "Libéré par un opérateur et publié.",
        _NOTHING[1],
    ),
    (
        "discarded",
        "quarantine_state",
        "Discarded by an operator.",
        _NOTHING[0],
        "Écarté par un opérateur.",
        _NOTHING[1],
    ),
)

CATALOGUE: dict[str, Reason] = {
    code: Reason(code, group, (en1, en2), (fr1, fr2)) for code, group, en1, en2, fr1, fr2 in _ENTRIES
}


def explain(code: str | None, locale: str = "en") -> tuple[str, str] | None:
    """(what it means, what to do) for *code*, or None for an unknown code (shown as it is)."""
    entry = CATALOGUE.get(code or "")
    return entry.explain(locale) if entry else None


def markdown() -> str:
    """docs/reasons.md: every code by group, in English (the console shows French as well)."""
    lines = [
        "# Reason codes",
        "",
        "Generated from `mailbridge/reasons.py` by `make reasons`; do not edit by hand. The console",
        "shows the same sentences (in English and French) wherever a code appears.",
        "",
    ]
    for group, (title, _fr) in GROUPS.items():
        entries = [r for r in CATALOGUE.values() if r.group == group]
        if not entries:
            continue
        lines += [f"## {title}", "", "| code | what it means | what to do |", "|---|---|---|"]
        lines += [f"| `{r.code}` | {r.en[0]} | {r.en[1]} |" for r in entries]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
