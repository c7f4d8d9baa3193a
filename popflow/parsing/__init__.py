"""Helpers of the built-in parser (:mod:`popflow.parsing.parser`): headers, addresses, charsets, MIME bodies.

Every function here is written for hostile input: it never raises on bad bytes, it reports what it
had to repair as short defect strings, and it does linear work in the size of its input.
"""
