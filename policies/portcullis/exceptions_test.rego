package portcullis_test

exc(patch) := object.union({"owner": "alice", "reason": "INC-42", "expires": future, "rules": ["*"]}, patch)

critical_input := with_scan({"counts": {"CRITICAL": 1}, "vulnerabilities": [vuln("CVE-2026-0001", "CRITICAL", "1.1")]})

test_exception_by_image_turns_deny_into_warn if {
	conf := object.union(base_config, {"exceptions": [exc({"images": ["ghcr.io/acme/api"], "rules": ["scan.limit"]})]})
	d := decide(critical_input, conf)
	d.allow == true
	d.deny == []
	d.warn == [{
		"rule": "scan.limit",
		"message": "1 CRITICAL vulnerability (CVE-2026-0001) exceeds limit 0 (excepted by alice until 2027-01-01T00:00:00Z: INC-42)",
	}]
}

test_exception_by_digest if {
	conf := object.union(base_config, {"exceptions": [exc({"digests": [base_input.image.digest]})]})
	decide(critical_input, conf).allow == true
}

test_exception_other_digest_does_not_apply if {
	conf := object.union(base_config, {"exceptions": [exc({"digests": ["sha256:2222"]})]})
	deny_rules(decide(critical_input, conf)) == {"scan.limit"}
}

test_exception_only_covers_listed_rules if {
	conf := object.union(base_config, {"exceptions": [exc({"images": ["ghcr.io/**"], "rules": ["scan.*"]})]})
	inp := object.union(critical_input, {"signatures": {"status": "none", "verified": [], "rejected": []}})
	d := decide(inp, conf)
	d.allow == false
	deny_rules(d) == {"signature.required"}
	warn_rules(d) == {"scan.limit"}
}

test_exception_rules_default_to_all if {
	conf := object.union(base_config, {"exceptions": [object.remove(exc({"images": ["ghcr.io/acme/*"]}), ["rules"])]})
	d := decide(with_image({"tag": "latest"}), object.union(conf, {"scopes": [object.union(base_scope, {"deny_tags": ["latest"]})]}))
	d.allow == true
	warn_rules(d) == {"tag.denied"}
}

test_expired_exception_does_nothing if {
	conf := object.union(base_config, {"exceptions": [exc({"images": ["ghcr.io/acme/api"], "expires": past})]})
	d := decide(critical_input, conf)
	d.allow == false
	deny_rules(d) == {"scan.limit"}
	d.warn == []
}

test_exception_without_expiry_does_nothing if {
	conf := object.union(base_config, {"exceptions": [object.remove(exc({"images": ["ghcr.io/acme/api"]}), ["expires"])]})
	decide(critical_input, conf).allow == false
}

test_exception_with_bad_expiry_does_nothing if {
	conf := object.union(base_config, {"exceptions": [exc({"images": ["ghcr.io/acme/api"], "expires": "next tuesday"})]})
	decide(critical_input, conf).allow == false
}

test_exception_inactive_without_now if {
	conf := object.union(base_config, {"exceptions": [exc({"images": ["ghcr.io/acme/api"]})]})
	decide(object.remove(critical_input, ["now"]), conf).allow == false
}

test_exception_image_glob_must_match if {
	conf := object.union(base_config, {"exceptions": [exc({"images": ["ghcr.io/acme/web"]})]})
	decide(critical_input, conf).allow == false
}

test_first_applicable_exception_is_named if {
	conf := object.union(base_config, {"exceptions": [
		exc({"images": ["ghcr.io/acme/api"], "expires": past, "owner": "expired"}),
		exc({"images": ["ghcr.io/acme/api"], "rules": ["tag.*"], "owner": "tags"}),
		exc({"images": ["ghcr.io/acme/api"], "owner": "bob", "reason": "r1"}),
		exc({"images": ["ghcr.io/**"], "owner": "carol"}),
	]})
	d := decide(critical_input, conf)
	d.allow == true
	warn_messages(d) == {"1 CRITICAL vulnerability (CVE-2026-0001) exceeds limit 0 (excepted by bob until 2027-01-01T00:00:00Z: r1)"}
}

test_exception_covers_no_match if {
	conf := object.union(base_config, {"exceptions": [exc({"images": ["docker.io/library/*"], "rules": ["scope.no_match"]})]})
	d := decide(with_image({"registry": "docker.io", "repository": "library/nginx"}), conf)
	d.allow == true
	warn_rules(d) == {"scope.no_match"}
}

# An index commits to its children's digests: an exception naming the admitted root (or the listing index) covers
# a child decided under it; one naming an unrelated digest does not.
test_exception_for_root_digest_covers_child if {
	child := with_image({
		"digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
		"parent": {"digest": "sha256:4444444444444444444444444444444444444444444444444444444444444444", "media_type": "application/vnd.oci.image.index.v1+json"},
		"root": {"digest": base_input.image.digest, "tag": "v1"},
	})
	inp := with_scan_critical(child)
	conf := object.union(base_config, {"exceptions": [exc({"digests": [base_input.image.digest]})]})
	decide(inp, conf).allow
	conf2 := object.union(base_config, {"exceptions": [exc({"digests": ["sha256:4444444444444444444444444444444444444444444444444444444444444444"]})]})
	decide(inp, conf2).allow
	conf3 := object.union(base_config, {"exceptions": [exc({"digests": ["sha256:5555"]})]})
	not decide(inp, conf3).allow
}

with_scan_critical(inp) := object.union(inp, {"scan": object.union(inp.scan, {"counts": {"CRITICAL": 2}})})
