"""Sigma rules (github.com/SigmaHQ/sigma) converted to our rule entries with pySigma: a processing
pipeline of ours (log sources -> event kinds, Sigma fields -> event fields) and a CEL backend.

    from monitor.policy.sigma import convert_paths, convert_text, rules_yaml

Supported log sources: product linux with category process_creation (exec), file_event (open for
writing, rename onto the path), file_delete (unlink), file_rename (rename), network_connection
(connect; DNS queries for rules on DestinationHostname), dns_query / dns (dns). A rule that cannot
be converted with its meaning intact is refused with the reason, never weakened.
"""

from monitor.policy.sigma.convert import (
    Conversion,
    Converted,
    Refusal,
    convert_paths,
    convert_text,
    rules_yaml,
    sigma_files,
)

__all__ = ["Conversion", "Converted", "Refusal", "convert_paths", "convert_text", "rules_yaml", "sigma_files"]
