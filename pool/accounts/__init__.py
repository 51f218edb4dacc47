"""Gateway users and their credits: passwords, an in-memory balance, a write-behind ledger.

By concern: ``inputs`` (names, amounts, limits as typed), ``passwords`` (scrypt), ``operations`` (user
operations on the store alone, for the CLI), ``verifier`` (the throttled slow check), ``account`` and
``usage`` (one user's in-memory state), ``service`` (``Accounts``: the gateway's synchronous questions
and the admin changes), ``ledger`` (the write-behind flush, leases and sync), ``view`` (what is shown).
This package's names are the surface the gateway, the admin API and the CLI import.
"""

from pool.accounts.inputs import MAX_AMOUNT, parse_amount, parse_limits, validate_name
from pool.accounts.operations import NewUser, add_credits, create_user, debit_credits, reset_password
from pool.accounts.passwords import generate_password, hash_password, verify_password
from pool.accounts.refusals import CreditsExhausted, LeaseMissing, LimitReached
from pool.accounts.service import Accounts
from pool.accounts.usage import Usage
from pool.accounts.view import UserView, iso_time

__all__ = [
    "MAX_AMOUNT",
    "Accounts",
    "CreditsExhausted",
    "LeaseMissing",
    "LimitReached",
    "NewUser",
    "Usage",
    "UserView",
    "add_credits",
    "create_user",
    "debit_credits",
    "generate_password",
    "hash_password",
    "iso_time",
    "parse_amount",
    "parse_limits",
    "reset_password",
    "validate_name",
    "verify_password",
]
