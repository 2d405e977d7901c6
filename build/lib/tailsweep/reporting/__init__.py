"""Reporting: pictures of predictions (``figures``) and multirun summaries (``compare``)."""
