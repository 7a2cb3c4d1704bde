"""The Xen guest interface: hypercalls, event channels, grant tables, XenStore, PV backends."""
