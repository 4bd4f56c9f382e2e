"""callbridge: the service that wires the CTI adapters, the model and the bus."""

__version__ = "0.1.0"
