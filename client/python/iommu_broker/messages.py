# SPDX-License-Identifier: Apache-2.0
"""What queries return: a typed, read-only view of each iommu.v1 message
(iommu_broker._proto_view.View), named as the message (`messages.Domain`,
`messages.TranslateResponse`, ...). Fields read as properties: enum fields
as members of iommu_broker.enums, messages as views, repeated fields as
tuples, maps as dicts; `to_proto()` gives a copy of the message.

Generated at build time from proto/iommu/v1 (gen_protos.py).
"""
from iommu_broker._generated import messages as _messages
from iommu_broker._generated.messages import *  # noqa: F401,F403

__all__: list[str] = []
__all__ += _messages.__all__  # a form type checkers follow
