"""PCI: configuration space, functions with BARs and MSI-X, and the host bridge of bus 0."""

from xenopus.devices.pci.config import PciConfig
from xenopus.devices.pci.device import BarKind, PciBar, PciDevice
from xenopus.devices.pci.host import PciHostBridge
from xenopus.devices.pci.msix import Msix

__all__ = ["BarKind", "Msix", "PciBar", "PciConfig", "PciDevice", "PciHostBridge"]
