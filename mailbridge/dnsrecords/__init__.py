"""What a practice must publish in DNS for its mail to arrive and verify, and what is published."""
