"""xenopus: a Xen-style hypervisor in Python on Linux KVM.

`import xenopus` gives the Python API (`xenopus.api`): `xenopus.connect()` returns a
client of the daemon; its errors are `xenopus.XenopusError` and its subclasses. They are
loaded on first use, so that the `xl` command, which imports this package, stays fast.
"""

__version__ = "0.1.0"

_API = ("connect", "Xenopus", "Domain", "Vcpu", "Device", "HostInfo")
_ERRORS = ("XenopusError", "DaemonUnavailable", "NoSuchDomain", "DomainExists",
           "ConfigInvalid", "DomainStateError", "NoParavirt")
__all__ = [*_API, *_ERRORS]


def __getattr__(name: str) -> object:
    if name in _API:
        from xenopus import api

        return getattr(api, name)
    if name in _ERRORS:
        from xenopus import client

        return getattr(client, name)
    raise AttributeError(f"module 'xenopus' has no attribute {name!r}")
