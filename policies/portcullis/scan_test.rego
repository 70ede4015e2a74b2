package portcullis_test

crit_vulns := [
	vuln("CVE-2026-0004", "CRITICAL", "1.1"),
	vuln("CVE-2026-0001", "CRITICAL", "1.1"),
	vuln("CVE-2026-0003", "CRITICAL", ""),
	vuln("CVE-2026-0002", "CRITICAL", "1.2"),
]

crit_scan(counts) := {"counts": counts, "vulnerabilities": crit_vulns}

test_scan_clean_allowed if {
	clean(base_input, base_config)
}

test_scan_limit_exceeded if {
	inp := with_scan(crit_scan({"CRITICAL": 3, "HIGH": 0}))
	inp2 := object.union(inp, {"scan": object.union(inp.scan, {"vulnerabilities": array.slice(crit_vulns, 1, 4)})})
	d := decide(inp2, base_config)
	d.allow == false
	d.deny == [{
		"rule": "scan.limit",
		"message": "3 CRITICAL vulnerabilities (CVE-2026-0001, CVE-2026-0002, CVE-2026-0003) exceed limit 0",
	}]
}

test_scan_limit_names_at_most_three if {
	d := decide(with_scan(crit_scan({"CRITICAL": 4})), base_config)
	deny_messages(d) == {"4 CRITICAL vulnerabilities (CVE-2026-0001, CVE-2026-0002, CVE-2026-0003, …) exceed limit 0"}
}

test_scan_limit_singular if {
	inp := with_scan({"counts": {"HIGH": 1}, "vulnerabilities": [vuln("CVE-2026-0100", "HIGH", "")]})
	d := decide(inp, scope_config({"scan": {"limits": {"HIGH": 0}}}))
	deny_messages(d) == {"1 HIGH vulnerability (CVE-2026-0100) exceeds limit 0"}
}

test_scan_limit_at_limit_allowed if {
	clean(with_scan({"counts": {"HIGH": 5}}), base_config)
}

test_scan_limit_over_limit_without_list if {
	d := decide(with_scan({"counts": {"HIGH": 6}, "vulnerabilities": []}), base_config)
	deny_messages(d) == {"6 HIGH vulnerabilities exceed limit 5"}
}

test_scan_limit_lowercase_severity_key if {
	d := decide(with_scan({"counts": {"MEDIUM": 3}}), scope_config({"scan": {"limits": {"medium": 2}}}))
	deny_rules(d) == {"scan.limit"}
}

test_scan_limit_counts_from_vulnerability_list if {
	inp := replace(base_input, "scan", replace(object.remove(base_input.scan, ["counts"]), "vulnerabilities", crit_vulns))
	deny_messages(decide(inp, base_config)) == {"4 CRITICAL vulnerabilities (CVE-2026-0001, CVE-2026-0002, CVE-2026-0003, …) exceed limit 0"}
}

test_scan_limit_fixable_only if {
	conf := scope_config({"scan": {"limits": {"CRITICAL": 2}, "fixable_only": true}})
	inp := with_scan({"counts": {"CRITICAL": 4}, "fixable_counts": {"CRITICAL": 3}, "vulnerabilities": crit_vulns})
	deny_messages(decide(inp, conf)) == {"3 fixable CRITICAL vulnerabilities (CVE-2026-0001, CVE-2026-0002, CVE-2026-0004) exceed limit 2"}
	inp2 := with_scan({"counts": {"CRITICAL": 4}, "fixable_counts": {"CRITICAL": 2}, "vulnerabilities": crit_vulns})
	clean(inp2, conf)
}

test_scan_limit_fixable_only_from_list if {
	conf := scope_config({"scan": {"limits": {"CRITICAL": 2}, "fixable_only": true}})
	inp := replace(base_input, "scan", {"status": "ok", "age_seconds": 0, "vulnerabilities": crit_vulns})
	deny_rules(decide(inp, conf)) == {"scan.limit"}
}

test_scan_limit_applies_to_stale_scans if {
	inp := with_scan(object.union(crit_scan({"CRITICAL": 4}), {"status": "stale"}))
	deny_rules(decide(inp, scope_config({"scan": {"limits": {"CRITICAL": 0}, "on_stale": "allow"}}))) == {"scan.limit"}
}

# --- ignore_cves

ignore(id, expires) := {"id": id, "owner": "sec", "reason": "not reachable", "expires": expires}

test_ignored_cves_not_counted if {
	conf := scope_config({"scan": {"limits": {"CRITICAL": 2}, "ignore_cves": [
		ignore("CVE-2026-0001", future),
		ignore("CVE-2026-0002", future),
	]}})
	d := decide(with_scan(crit_scan({"CRITICAL": 4})), conf)
	d.allow == true
	d.deny == []
	d.warn == [
		{"rule": "scan.ignored", "message": concat("", ["CVE-2026-0001 ignored until ", future, " (sec: not reachable)"])},
		{"rule": "scan.ignored", "message": concat("", ["CVE-2026-0002 ignored until ", future, " (sec: not reachable)"])},
	]
}

test_ignored_cve_not_found_is_not_reported if {
	conf := scope_config({"scan": {"limits": {"CRITICAL": 2}, "ignore_cves": [ignore("CVE-2099-0001", future)]}})
	clean(with_scan({"counts": {"CRITICAL": 0}}), conf)
}

test_ignored_cve_not_named if {
	conf := scope_config({"scan": {"limits": {"CRITICAL": 0}, "ignore_cves": [ignore("CVE-2026-0001", future)]}})
	deny_messages(decide(with_scan(crit_scan({"CRITICAL": 4})), conf)) == {"3 CRITICAL vulnerabilities (CVE-2026-0002, CVE-2026-0003, CVE-2026-0004) exceed limit 0"}
}

test_expired_cve_ignore_still_counted if {
	conf := scope_config({"scan": {"limits": {"CRITICAL": 2}, "ignore_cves": [
		ignore("CVE-2026-0001", future),
		ignore("CVE-2026-0002", past),
	]}})
	deny_messages(decide(with_scan(crit_scan({"CRITICAL": 4})), conf)) == {"3 CRITICAL vulnerabilities (CVE-2026-0002, CVE-2026-0003, CVE-2026-0004) exceed limit 2"}
}

test_cve_ignore_without_expiry_is_inactive if {
	conf := scope_config({"scan": {"limits": {"CRITICAL": 3}, "ignore_cves": [{"id": "CVE-2026-0001", "owner": "sec"}]}})
	deny_rules(decide(with_scan(crit_scan({"CRITICAL": 4})), conf)) == {"scan.limit"}
}

# --- scan status handling

test_scan_missing_denied_by_default if {
	d := decide(with_scan({"status": "missing"}), base_config)
	d.deny == [{"rule": "scan.missing", "message": "no vulnerability scan result for this image"}]
}

test_scan_missing_warn if {
	d := decide(with_scan({"status": "missing"}), scope_config({"scan": {"on_missing": "warn"}}))
	d.allow == true
	warn_rules(d) == {"scan.missing"}
}

test_scan_missing_allow if {
	clean(with_scan({"status": "missing"}), scope_config({"scan": {"on_missing": "allow"}}))
}

test_scan_absent_from_input_is_missing if {
	deny_rules(decide(object.remove(base_input, ["scan"]), base_config)) == {"scan.missing"}
}

test_scan_pending if {
	deny_rules(decide(with_scan({"status": "pending"}), base_config)) == {"scan.pending"}
	d := decide(with_scan({"status": "pending"}), scope_config({"scan": {"on_pending": "warn"}}))
	d.allow == true
	d.warn == [{"rule": "scan.pending", "message": "vulnerability scan is still pending"}]
	clean(with_scan({"status": "pending"}), scope_config({"scan": {"on_pending": "allow"}}))
}

test_scan_stale_status if {
	deny_rules(decide(with_scan({"status": "stale", "age_seconds": 90000}), base_config)) == {"scan.stale"}
	clean(with_scan({"status": "stale"}), scope_config({"scan": {"on_stale": "allow"}}))
}

test_scan_stale_by_age if {
	d := decide(with_scan({"age_seconds": 90000}), base_config)
	d.deny == [{"rule": "scan.stale", "message": "vulnerability scan is stale (90000s old, max 86400s)"}]
	d2 := decide(with_scan({"age_seconds": 90000}), scope_config({"scan": {"max_age_seconds": 86400, "on_stale": "warn"}}))
	d2.allow == true
	warn_rules(d2) == {"scan.stale"}
}

test_scan_stale_by_scanned_at if {
	inp := replace(base_input, "scan", object.union(object.remove(base_input.scan, ["age_seconds"]), {"scanned_at": "2026-05-30T12:00:00Z"}))
	deny_messages(decide(inp, base_config)) == {"vulnerability scan is stale (172800s old, max 86400s)"}
}

test_scan_fresh_without_max_age if {
	clean(with_scan({"age_seconds": 9999999}), object.union(base_config, {"scopes": [replace(base_scope, "scan", {"limits": {}})]}))
}

test_scan_error if {
	d := decide(with_scan({"status": "error", "error": "scanner unreachable"}), base_config)
	d.deny == [{"rule": "scan.error", "message": "vulnerability scan failed: scanner unreachable"}]
	d2 := decide(with_scan({"status": "error"}), scope_config({"scan": {"on_error": "warn"}}))
	d2.warn == [{"rule": "scan.error", "message": "vulnerability scan failed"}]
	d2.allow == true
}

test_scan_not_configured_fails_closed if {
	d := decide(with_scan({"status": "not_configured"}), scope_config({"scan": {"on_missing": "allow"}}))
	d.deny == [{"rule": "scan.missing", "message": "vulnerability scan required but no scan source is configured in the proxy"}]
}

test_scan_unknown_status_denied if {
	d := decide(with_scan({"status": "weird"}), scope_config({"scan": {"on_error": "allow"}}))
	deny_messages(d) == {"unknown vulnerability scan status \"weird\""}
}

test_scan_not_required_without_scan_block if {
	conf := object.union(base_config, {"scopes": [object.remove(base_scope, ["scan"])]})
	clean(with_scan({"status": "not_configured"}), conf)
	clean(with_scan(crit_scan({"CRITICAL": 9})), conf)
}

test_unknown_on_value_denies if {
	deny_rules(decide(with_scan({"status": "pending"}), scope_config({"scan": {"on_pending": "sometimes"}}))) == {"scan.pending"}
}

test_scan_stale_status_without_age if {
	inp := replace(base_input, "scan", {"status": "stale", "counts": {}})
	d := decide(inp, object.union(base_config, {"scopes": [replace(base_scope, "scan", {})]}))
	d.deny == [{"rule": "scan.stale", "message": "vulnerability scan is stale"}]
}

test_vulnerability_without_severity_is_unknown if {
	inp := replace(base_input, "scan", {"status": "ok", "vulnerabilities": [{"id": "GHSA-xxxx"}]})
	d := decide(inp, object.union(base_config, {"scopes": [replace(base_scope, "scan", {"limits": {"UNKNOWN": 0}})]}))
	deny_messages(d) == {"1 UNKNOWN vulnerability (GHSA-xxxx) exceeds limit 0"}
}

# --- default limits: a scope with `scan: {}` allows no CRITICAL vulnerability

empty_scan_config := object.union(base_config, {"scopes": [replace(base_scope, "scan", {})]})

test_default_limits_deny_critical if {
	inp := with_scan({"counts": {"CRITICAL": 1, "HIGH": 7}, "vulnerabilities": [vuln("CVE-2026-0001", "CRITICAL", "1.1")]})
	d := decide(inp, empty_scan_config)
	d.deny == [{"rule": "scan.limit", "message": "1 CRITICAL vulnerability (CVE-2026-0001) exceeds limit 0"}]
}

test_default_limits_allow_high if {
	clean(with_scan({"counts": {"CRITICAL": 0, "HIGH": 7}}), empty_scan_config)
}

test_explicit_empty_limits_mean_none if {
	conf := object.union(base_config, {"scopes": [replace(base_scope, "scan", {"limits": {}})]})
	clean(with_scan({"counts": {"CRITICAL": 3}}), conf)
}

test_default_limits_with_ignored_cve if {
	inp := with_scan({"counts": {"CRITICAL": 1}, "vulnerabilities": [vuln("CVE-2026-0001", "CRITICAL", "1.1")]})
	conf := object.union(base_config, {"scopes": [replace(base_scope, "scan", {"ignore_cves": [ignore("CVE-2026-0001", future)]})]})
	d := decide(inp, conf)
	d.allow == true
	warn_rules(d) == {"scan.ignored"}
	conf2 := object.union(base_config, {"scopes": [replace(base_scope, "scan", {"ignore_cves": [ignore("CVE-2026-0001", past)]})]})
	deny_rules(decide(inp, conf2)) == {"scan.limit"}
}

# --- on_pending: wait

wait_config(patch) := object.union(base_config, {"scopes": [replace(base_scope, "scan", object.union({"on_pending": "wait"}, patch))]})

test_wait_requested_when_only_pending if {
	d := decide(with_scan({"status": "pending"}), wait_config({"wait_seconds": 5}))
	d.allow == false
	d.wait_seconds == 5
	d.deny == [{"rule": "scan.pending", "message": "vulnerability scan is still pending"}]
}

test_wait_default_and_bounds if {
	decide(with_scan({"status": "pending"}), wait_config({})).wait_seconds == 10
	decide(with_scan({"status": "pending"}), wait_config({"wait_seconds": 300})).wait_seconds == 20
	decide(with_scan({"status": "pending"}), wait_config({"wait_seconds": 0})).wait_seconds == 1
	decide(with_scan({"status": "pending"}), wait_config({"wait_seconds": "long"})).wait_seconds == 10
}

test_no_wait_when_something_else_denies if {
	inp := object.union(with_image({"tag": "latest"}), {"scan": {"status": "pending"}})
	d := decide(inp, object.union(wait_config({}), {"scopes": [object.union(replace(base_scope, "scan", {"on_pending": "wait"}), {"deny_tags": ["latest"]})]}))
	deny_rules(d) == {"scan.pending", "tag.denied"}
	not d.wait_seconds
}

test_no_wait_in_warn_mode if {
	conf := object.union(base_config, {"scopes": [object.union(replace(base_scope, "scan", {"on_pending": "wait"}), {"mode": "warn"})]})
	d := decide(with_scan({"status": "pending"}), conf)
	d.mode == "warn"
	not d.wait_seconds
}

test_no_wait_when_not_pending if {
	d := decide(with_scan({"status": "missing"}), wait_config({}))
	not d.wait_seconds
	clean(base_input, wait_config({}))
	not decide(base_input, wait_config({})).wait_seconds
}

test_no_wait_when_pending_is_excepted if {
	conf := object.union(wait_config({}), {"exceptions": [{"images": ["ghcr.io/acme/**"], "rules": ["scan.*"], "owner": "sec", "reason": "r", "expires": future}]})
	d := decide(with_scan({"status": "pending"}), conf)
	d.allow == true
	not d.wait_seconds
}

test_after_waiting_pending_is_denied if {
	d := decide(with_scan({"status": "pending", "waited_seconds": 3.2}), wait_config({"wait_seconds": 3}))
	d.allow == false
	not d.wait_seconds
	d.deny == [{"rule": "scan.pending", "message": "vulnerability scan pending: no result after waiting 3s"}]
}

test_after_waiting_result_decides if {
	d := decide(with_scan({"status": "ok", "waited_seconds": 1, "counts": {"CRITICAL": 1}, "vulnerabilities": [vuln("CVE-2026-0009", "CRITICAL", "")]}), wait_config({}))
	deny_messages(d) == {"1 CRITICAL vulnerability (CVE-2026-0009) exceeds limit 0"}
	clean(with_scan({"status": "ok", "waited_seconds": 1}), wait_config({}))
}

test_wait_is_not_valid_for_other_statuses if {
	conf := object.union(base_config, {"scopes": [replace(base_scope, "scan", {"on_missing": "wait", "on_error": "wait"})]})
	d := decide(with_scan({"status": "missing"}), conf)
	deny_rules(d) == {"scan.missing"}
	not d.wait_seconds
}
