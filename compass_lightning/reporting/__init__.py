"""Reporting: tags and their meaning, the history file, the reporter that feeds the loggers, figures, the radar and the HTML summaries."""
