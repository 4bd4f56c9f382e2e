"""The customer store: one profile per customer across every channel.

``CustomerStore`` (``customers.store``) is the interface; ``SQLiteStore`` the embedded default.
"""
