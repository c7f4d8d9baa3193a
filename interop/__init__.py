"""popflow's interop suite (``make interop``): real POP3 servers from Debian, unpacked and run by hand.

Not part of ``make test`` (it needs root and several minutes). See docs/interop.md.
"""
