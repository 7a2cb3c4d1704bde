"""XenStore: the node tree, the xsd_sockmsg wire protocol, the server and a client."""
