"""ACPI for xenopus guests: the tables (`tables`) and the AML encoder they use (`aml`)."""

from xenopus.acpi.tables import (
    AcpiPci,
    AcpiPlatform,
    AcpiTables,
    build_tables,
    install,
    installed_rsdp,
)

__all__ = ["AcpiPci", "AcpiPlatform", "AcpiTables", "build_tables", "install", "installed_rsdp"]
