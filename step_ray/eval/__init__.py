"""Multiple-choice evaluation by option likelihood: ``scoring`` and ``evaluate``."""
