"""Security alerts: raised, folded, acknowledged, escalated, notified; the GDPR Art. 33 clock."""
