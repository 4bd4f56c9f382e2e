"""The customer store: one profile per customer across every channel.

``CustomerStore`` (``customers.store``) is the interface; ``SQLiteStore`` the embedded default.
"""

from customers.migrate import MigrationError, SchemaTooNew
from customers.model import (
    BatchResult,
    CallPermission,
    Candidate,
    Channel,
    Consent,
    ConsentScope,
    Customer,
    CustomerFacts,
    DoNotCall,
    Identity,
    IdentityKind,
    Interaction,
    NewCustomer,
    Note,
    Profile,
    Value,
)
from customers.sqlite_store import IdentityConflict, SQLiteStore, StorageError, StoreClosed
from customers.store import Conflict, CustomerError, CustomerStore, InvalidInput, NotFound

__all__ = [
    "BatchResult",
    "CallPermission",
    "Candidate",
    "Channel",
    "Conflict",
    "Consent",
    "ConsentScope",
    "Customer",
    "CustomerError",
    "CustomerFacts",
    "CustomerStore",
    "DoNotCall",
    "Identity",
    "IdentityConflict",
    "IdentityKind",
    "Interaction",
    "InvalidInput",
    "MigrationError",
    "NewCustomer",
    "NotFound",
    "Note",
    "Profile",
    "SQLiteStore",
    "SchemaTooNew",
    "StorageError",
    "StoreClosed",
    "Value",
]
