"""Reports of an assessment for auditors: JSON, Markdown, PDF and OSCAL assessment-results."""
