"""What the gateway keeps: the home folder (`home`) and the SQLite store (`store`)."""
