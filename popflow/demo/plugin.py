"""The demo's transform plugin (``popflow demo`` copies this file into ``<dir>/plugins/``).

A plain ``.py`` file in a plugins directory is all a plugin needs: import the marker from the
package root and implement a hook. This one enriches each kept message before routing.
"""

import re

from popflow import Message, hookimpl

ORDER_RE = re.compile(r"order #(\d+)", re.IGNORECASE)
URGENT_RE = re.compile(r"\b(urgent|asap|dringend|срочно)\b", re.IGNORECASE)


@hookimpl
def popflow_transform(message: Message) -> None:
    """Tag orders with their number, support mail with a priority, and note attachments."""
    subject = message.subject or ""
    if found := ORDER_RE.search(subject):
        message.meta["order_number"] = found.group(1)
        message.tags.add("order")
    else:
        message.tags.add("support")
        message.meta["priority"] = "high" if URGENT_RE.search(subject) else "normal"
    if message.attachments:
        message.tags.add("has-attachment")
        message.meta["attachment_types"] = sorted({a.content_type for a in message.attachments})
    if message.defects:
        message.tags.add("repaired")
