"""The Ray actors (thin shells) and the plain classes that do their work."""
