"""tidelog's broker. `from broker import EmbeddedBroker, ThreadedBroker` runs one inside a test
process (broker/embedded.py); the names load on first use, so `import broker` stays cheap."""


def __getattr__(name: str):
    if name in ("EmbeddedBroker", "ThreadedBroker"):
        from broker import embedded

        return getattr(embedded, name)
    raise AttributeError(f"module 'broker' has no attribute {name!r}")
