"""The one exception tree of vendor_node.

The service loop catches these by class and handles each on purpose
(see service.py); anything outside this tree is a bug and restarts the unit.
"""


class VendorNodeError(Exception):
    """Base of every error the firmware raises on purpose."""


class ConfigError(VendorNodeError):
    """The configuration file is missing, malformed, or has a bad key (the message names the key path)."""


class UsageError(VendorNodeError):
    """A command-line argument is wrong; the message says which and why."""


# --- hardware ---------------------------------------------------------------
class HardwareError(VendorNodeError):
    """A device failed; the unit goes out of service until it is back."""


class CameraError(HardwareError):
    """The camera did not deliver a frame in time, or could not be opened."""


class SensorError(HardwareError):
    """GPIO (proximity sensor, LEDs, buzzer) could not be set up."""


class BoardLinkError(HardwareError):
    """The serial link to the MDB adapter is lost or unusable."""


class ProtocolError(VendorNodeError):
    """A line from the MDB adapter could not be understood (logged and ignored by the loop)."""


# --- recognition ------------------------------------------------------------
class RecognitionError(VendorNodeError):
    """Base for recognizer failures."""


class ModelError(RecognitionError):
    """The model file or its manifest is missing, corrupt, or does not match its hash."""


class HandRejected(RecognitionError):
    """The image holds no usable hand; ``reason`` is a short code, the message tells the employee what to do."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class DatasetError(RecognitionError):
    """An evaluation folder or manifest cannot be used."""


class ImageFileError(VendorNodeError):
    """An image file cannot be used: unreadable, not an image, or claiming an absurd size (images.py)."""


# --- accounts, journal, sync ----------------------------------------------
class AccountsError(VendorNodeError):
    """Base for the local account store."""


class BundleError(AccountsError):
    """An account bundle is unsigned, badly signed, old, expired, truncated or malformed."""


class KeyFileError(AccountsError):
    """A key file is missing, has loose permissions, or does not hold a key."""


class ConsentError(AccountsError):
    """A template would be stored without a recorded consent."""


class JournalError(VendorNodeError):
    """The charging journal cannot be written or read; the unit goes out of service."""


class JournalCorrupt(JournalError):
    """The journal's hash chain is broken; the message names the first bad entry."""


class JournalRefused(JournalError):
    """An entry was refused (unknown or closed session, bad amount or reason); nothing was written."""


class SyncError(VendorNodeError):
    """The nightly sync could not reach the back office or the sync folder; retried next time."""


# --- the back office ------------------------------------------------------
class OfficeError(VendorNodeError):
    """The back office refused an input or an action (form, CSV, command); the message names what is wrong."""


class UnitRequestRefused(OfficeError):
    """A unit's API request was refused; ``status`` is the HTTP status the unit gets (400/401/403/409/413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
