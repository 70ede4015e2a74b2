# Vulnerability scan rules of the matching scope: scan.limit, scan.missing, scan.pending, scan.stale, scan.error.
# They apply when the scope has a `scan` block, to manifest requests only. A scope with `scan: {}` gets the default
# limits (no CRITICAL vulnerability) and denies when the scan is missing, pending, stale or in error.
package portcullis

scan_cfg := scope.scan if is_object(scope.scan)

scan_required if {
	is_manifest_request
	scan_cfg
}

default scan_in := {}

scan_in := input.scan if is_object(input.scan)

scan_status := object.get(scan_in, "status", "missing")

# on_missing / on_pending / on_stale / on_error: "deny" (default, also for unknown values), "warn" or "allow".
# on_pending may also be "wait": see scan_wait below.
scan_action(kind) := object.get(scan_cfg, concat("", ["on_", kind]), "deny")

# Severity -> maximum count. Absent: no CRITICAL vulnerability allowed. An explicit {} means no limits.
default_scan_limits := {"CRITICAL": 0}

scan_limits := object.get(scan_cfg, "limits", default_scan_limits)

# Age of the scan in seconds: input.scan.age_seconds, else computed from scanned_at and now.
scan_age := scan_in.age_seconds if is_number(scan_in.age_seconds)

else := (now_ns - time.parse_rfc3339_ns(scan_in.scanned_at)) / 1000000000

scan_too_old if {
	max_age := scan_cfg.max_age_seconds
	is_number(max_age)
	scan_age > max_age
}

scan_stale if scan_status == "stale"

scan_stale if {
	scan_status == "ok"
	scan_too_old
}

# [rule, message, action]
scan_events contains ["scan.missing", "no vulnerability scan result for this image", scan_action("missing")] if {
	scan_required
	scan_status == "missing"
}

# The proxy sets scan.waited_seconds after it waited for the pending scan (on_pending: "wait"): then it is a deny.
scan_waited if is_number(scan_in.waited_seconds)

scan_pending_action := "deny" if scan_action("pending") == "wait"

else := scan_action("pending")

scan_events contains ["scan.pending", "vulnerability scan is still pending", scan_pending_action] if {
	scan_required
	scan_status == "pending"
	not scan_waited
}

scan_events contains ["scan.pending", msg, scan_pending_action] if {
	scan_required
	scan_status == "pending"
	scan_waited
	msg := concat("", ["vulnerability scan pending: no result after waiting ", int_str(round(scan_in.waited_seconds)), "s"])
}

# --- on_pending: "wait". When a pending scan is the only reason to deny (in enforce mode), the decision carries
# "wait_seconds": the proxy waits that long for the result (capped by its scan.maxWait) and decides once more.
# wait_seconds: default 10, at least 1, at most 20 (well under containerd's and Docker's timeouts).

default_scan_wait_seconds := 10

scan_wait_seconds := min([max([object.get(scan_cfg, "wait_seconds", default_scan_wait_seconds), 1]), 20]) if {
	is_number(object.get(scan_cfg, "wait_seconds", default_scan_wait_seconds))
} else := default_scan_wait_seconds

scan_wait if {
	scan_required
	scan_status == "pending"
	scan_action("pending") == "wait"
	not scan_waited
	mode == "enforce"
	count(deny_set) > 0
	count({v | some v in deny_set; v.rule != "scan.pending"}) == 0
}

scan_events contains ["scan.stale", msg, scan_action("stale")] if {
	scan_required
	scan_stale
	msg := stale_message
}

stale_message := concat("", [
	"vulnerability scan is stale (", int_str(scan_age), "s old, max ",
	int_str(scan_cfg.max_age_seconds), "s)",
]) if {
	is_number(scan_age)
	is_number(scan_cfg.max_age_seconds)
} else := "vulnerability scan is stale"

scan_events contains ["scan.error", msg, scan_action("error")] if {
	scan_required
	scan_status == "error"
	msg := concat("", ["vulnerability scan failed", scan_error_detail])
}

scan_error_detail := concat("", [": ", scan_in.error]) if is_string(scan_in.error)

else := ""

# Fail closed: the scope needs a scan but the proxy has no scan source configured. Not subject to on_missing.
scan_events contains ["scan.missing", msg, "deny"] if {
	scan_required
	scan_status == "not_configured"
	msg := "vulnerability scan required but no scan source is configured in the proxy"
}

# An unknown status is an error that on_error cannot allow.
scan_events contains ["scan.error", msg, "deny"] if {
	scan_required
	not scan_status in {"ok", "missing", "pending", "stale", "error", "not_configured"}
	msg := concat("", ["unknown vulnerability scan status ", q(scan_status)])
}

violations contains {"rule": e[0], "message": e[1]} if {
	some e in scan_events
	not e[2] in {"warn", "allow"}
}

warnings contains {"rule": e[0], "message": e[1]} if {
	some e in scan_events
	e[2] == "warn"
}

# --- scan.limit: limits map severity -> maximum count (CRITICAL, HIGH, MEDIUM, LOW, UNKNOWN). Checked when
# the scan status is ok or stale. fixable_only counts only vulnerabilities with a fixed version.

scan_fixable_only if object.get(scan_cfg, "fixable_only", false) == true

scan_vulns := [v | some v in object.get(scan_in, "vulnerabilities", []); is_object(v)]

vuln_severity(v) := upper(v.severity) if is_string(v.severity)

else := "UNKNOWN"

vuln_fixed(v) if {
	is_string(v.fixed)
	v.fixed != ""
}

vuln_counts(v, sev) if {
	vuln_severity(v) == sev
	not scan_fixable_only
}

vuln_counts(v, sev) if {
	vuln_severity(v) == sev
	scan_fixable_only
	vuln_fixed(v)
}

# CVE ids ignored by unexpired entries of scan.ignore_cves. An ignore needs `expires`; expired ignores do nothing.
ignored_cves contains ig.id if {
	some ig in object.get(scan_cfg, "ignore_cves", [])
	is_string(ig.id)
	unexpired(ig)
}

# An ignored CVE that the scan found is reported as a warning naming who owns the exception and until when.
warnings contains {"rule": "scan.ignored", "message": msg} if {
	scan_required
	scan_status in {"ok", "stale"}
	some ig in object.get(scan_cfg, "ignore_cves", [])
	is_string(ig.id)
	unexpired(ig)
	some v in scan_vulns
	v.id == ig.id
	msg := concat("", [
		ig.id, " ignored until ", ig.expires, " (", object.get(ig, "owner", "<unknown>"), ": ",
		object.get(ig, "reason", "no reason given"), ")",
	])
}

scan_count_field := "fixable_counts" if scan_fixable_only

else := "counts"

# From input.scan.counts (or fixable_counts); else counted from the vulnerability list.
scan_base_count(sev) := n if {
	n := scan_in[scan_count_field][sev]
	is_number(n)
} else := count([v | some v in scan_vulns; vuln_counts(v, sev)])

scan_ignored_count(sev) := count([v | some v in scan_vulns; vuln_counts(v, sev); v.id in ignored_cves])

scan_effective_count(sev) := max([0, scan_base_count(sev) - scan_ignored_count(sev)])

scan_top_ids(sev) := {v.id |
	some v in scan_vulns
	vuln_counts(v, sev)
	is_string(v.id)
	not v.id in ignored_cves
}

violations contains {"rule": "scan.limit", "message": msg} if {
	scan_required
	scan_status in {"ok", "stale"}
	some sev_key, limit in scan_limits
	is_number(limit)
	sev := upper(sev_key)
	n := scan_effective_count(sev)
	n > limit
	msg := scan_limit_message(n, sev, limit)
}

scan_fixable_word := "fixable " if scan_fixable_only

else := ""

plural(n, one, many) := one if n == 1

else := many

paren_ids(ids) := concat("", [" (", first_three(ids), ")"]) if count(ids) > 0

else := ""

# "3 CRITICAL vulnerabilities (CVE-1, CVE-2, CVE-3, …) exceed limit 0"
scan_limit_message(n, sev, limit) := concat("", [
	int_str(n), " ", scan_fixable_word, sev, plural(n, " vulnerability", " vulnerabilities"),
	paren_ids(scan_top_ids(sev)), plural(n, " exceeds ", " exceed "), "limit ", int_str(limit),
])
