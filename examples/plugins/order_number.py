import re

from popflow import hookimpl


@hookimpl
def popflow_transform(message):
    """Tag order confirmations with their order number."""
    if found := re.search(r"order #(\d+)", message.subject or "", re.I):
        message.meta["order_number"] = found.group(1)
        message.tags.add("order")
