"""The path of a notification: fanout → render → compose → sign → deliver → worker; bounces come back."""
