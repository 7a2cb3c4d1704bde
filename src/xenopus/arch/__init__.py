"""Architectural definitions of the guest CPU: register bits, descriptor encodings and
exception vectors as the processor manuals define them, with no behaviour and no imports.

One module per architecture (`x86.py` today); every layer may import it.
"""
