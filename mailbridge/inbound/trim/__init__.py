"""Reply trimming: what the author wrote, apart from what they quoted, signed, or received from us."""
