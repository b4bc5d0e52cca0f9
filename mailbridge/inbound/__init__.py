"""The path of an inbound email: prescan → parse → classify → authenticate → tokens → policy → body → attachments → pipeline."""
