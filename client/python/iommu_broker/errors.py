# SPDX-License-Identifier: Apache-2.0
"""IommuError and one subclass per gRPC status code.

The daemon maps every core absl::Status to a gRPC status once; this module
maps it back once (`from_rpc_error`). The message is the daemon's, naming the
offending field and value ("size_bytes=0x0: must be non-zero").
"""
import grpc


class IommuError(Exception):
    """A failed iommu-broker call: `code` (grpc.StatusCode) and `message`."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Cancelled(IommuError): code = grpc.StatusCode.CANCELLED
class Unknown(IommuError): code = grpc.StatusCode.UNKNOWN
class InvalidArgument(IommuError): code = grpc.StatusCode.INVALID_ARGUMENT
class DeadlineExceeded(IommuError): code = grpc.StatusCode.DEADLINE_EXCEEDED
class NotFound(IommuError): code = grpc.StatusCode.NOT_FOUND
class AlreadyExists(IommuError): code = grpc.StatusCode.ALREADY_EXISTS
class PermissionDenied(IommuError): code = grpc.StatusCode.PERMISSION_DENIED
class ResourceExhausted(IommuError): code = grpc.StatusCode.RESOURCE_EXHAUSTED
class FailedPrecondition(IommuError): code = grpc.StatusCode.FAILED_PRECONDITION
class Aborted(IommuError): code = grpc.StatusCode.ABORTED
class OutOfRange(IommuError): code = grpc.StatusCode.OUT_OF_RANGE
class Unimplemented(IommuError): code = grpc.StatusCode.UNIMPLEMENTED
class Internal(IommuError): code = grpc.StatusCode.INTERNAL
class Unavailable(IommuError): code = grpc.StatusCode.UNAVAILABLE
class DataLoss(IommuError): code = grpc.StatusCode.DATA_LOSS
class Unauthenticated(IommuError): code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[IommuError]] = {
    cls.code: cls for cls in IommuError.__subclasses__()}
# google.rpc.Code numbers (BatchResult.code) to grpc.StatusCode.
_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def error_for(code: grpc.StatusCode, message: str) -> IommuError:
    """The IommuError subclass for `code` (IommuError itself for OK)."""
    return _BY_CODE.get(code, IommuError)(code, message)


def error_for_number(number: int, message: str) -> IommuError:
    """As error_for, from a numeric google.rpc.Code (e.g. BatchResult.code)."""
    return error_for(_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN), message)


def from_rpc_error(e: grpc.RpcError) -> IommuError:
    """The IommuError for a failed call (a grpc.Call that raised)."""
    return error_for(e.code(), e.details() or "")
