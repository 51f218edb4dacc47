"""``[[gateway.rules]]``: per-domain rules, decided once per request at admission.

The first rule whose ``match`` globs match the request's (canonical) host decides: ``refuse`` is our
403, ``direct`` sends the request through no upstream (the direct fallback's limits still hold:
``gateway.direct_allow``), and routing keys fill the request's route where it names nothing itself.
A host's rule is remembered (bounded), so the globs are tried once per host, not per request.
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase

from config.settings import GatewayRule
from gateway.proxy.refusals import Admission, Refusal
from pool.models import AnonymityLevel, ProxyProtocol
from pool.selector import Route

__all__ = ["HostRules"]

_CACHE = 4096  # hosts whose rule is remembered


class HostRules:
    def __init__(self, rules: list[GatewayRule]) -> None:
        self.rules = [([glob.lower() for glob in rule.match], rule) for rule in rules]
        self._known: dict[str, GatewayRule | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rule_for(self, host: str) -> GatewayRule | None:
        try:
            return self._known[host]
        except KeyError:
            pass
        name = host.lower()
        found = next((rule for globs, rule in self.rules if any(fnmatchcase(name, g) for g in globs)), None)
        if len(self._known) >= _CACHE:
            self._known.clear()
        self._known[host] = found
        return found

    @staticmethod
    def refuse(host: str) -> Refusal:
        return Refusal(403, f"requests to {host} are refused by a gateway rule", "forbidden")

    @staticmethod
    def apply(rule: GatewayRule, admission: Admission) -> Admission:
        """The admission as ``rule`` (not ``refuse``) changes it."""
        if rule.action == "direct":
            return replace(admission, direct=True)
        route = admission.route
        return replace(
            admission,
            route=Route(
                protocol=route.protocol or (ProxyProtocol(rule.protocol) if rule.protocol else None),
                country=route.country or (rule.country.upper() if rule.country else None),
                anonymity=route.anonymity or (AnonymityLevel(rule.anonymity) if rule.anonymity else None),
                session=route.session,
                strict=route.strict,
                session_ttl=route.session_ttl,
            ),
        )
