# Fixtures and helpers shared by the tests (excluded from the bundle like every *_test.rego file).
package portcullis_test

now := "2026-06-01T12:00:00Z"

future := "2027-01-01T00:00:00Z"

past := "2026-01-01T00:00:00Z"

vuln(id, sev, fixed) := {"id": id, "severity": sev, "package": "libfoo", "installed": "1.0", "fixed": fixed}

# A manifest request for ghcr.io/acme/api:v1 that passes base_config: signed by both authorities, scan clean.
base_input := {
	"version": 1,
	"now": now,
	"request": {
		"kind": "manifest", "method": "GET",
		"client": {"ip": "10.0.0.7", "user": "ci", "user_agent": "containerd/1.7"},
		"routing": "ns",
	},
	"image": {
		"registry": "ghcr.io", "repository": "acme/api", "tag": "v1",
		"digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
		"media_type": "application/vnd.oci.image.index.v1+json", "platforms": ["linux/amd64"],
		"labels": {}, "created": "2026-05-01T00:00:00Z",
	},
	"upstream": {"name": "ghcr", "url": "https://ghcr.io"},
	"signatures": {
		"status": "ok",
		"verified": [
			{"authority": "release-team", "kind": "cosign-key", "format": "sigstore-bundle", "identity": {}, "tlog": true, "signed_at": "2026-05-01T00:00:00Z"},
			{"authority": "ci", "kind": "cosign-keyless", "format": "cosign-legacy", "identity": {"issuer": "https://token.actions.githubusercontent.com", "subject": "repo:acme/api"}, "tlog": true, "signed_at": "2026-05-01T00:00:00Z"},
		],
		"rejected": [],
	},
	"attestations": [],
	"scan": {
		"status": "ok", "source": "scanner", "scanned_at": "2026-06-01T00:00:00Z", "age_seconds": 43200,
		"counts": {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 3, "LOW": 0, "UNKNOWN": 0},
		"fixable_counts": {"CRITICAL": 0, "HIGH": 0, "MEDIUM": 1, "LOW": 0, "UNKNOWN": 0},
		"vulnerabilities": [vuln("CVE-2026-0100", "HIGH", "")],
	},
}

base_scope := {
	"name": "acme",
	"images": ["ghcr.io/acme/**"],
	"signatures": {"authorities": ["release-team", "ci"], "require": "all"},
	"scan": {"limits": {"CRITICAL": 0, "HIGH": 5}, "max_age_seconds": 86400},
}

base_config := {
	"registries": ["docker.io", "ghcr.io", "127.0.0.1:*"],
	"scopes": [base_scope],
}

# object.union merges nested objects; replace() swaps a whole member.
replace(obj, key, value) := object.union(object.remove(obj, [key]), {key: value})

# Config with the single scope patched (nested objects are merged).
scope_config(patch) := object.union(base_config, {"scopes": [object.union(base_scope, patch)]})

with_image(patch) := object.union(base_input, {"image": object.union(base_input.image, patch)})

with_sigs(sigs) := object.union(base_input, {"signatures": sigs})

with_scan(patch) := object.union(base_input, {"scan": object.union(base_input.scan, patch)})

decide(inp, conf) := d if {
	d := data.portcullis.decision with input as inp with data.portcullis.config as conf
}

deny_rules(d) := {e.rule | some e in d.deny}

warn_rules(d) := {e.rule | some e in d.warn}

deny_messages(d) := {e.message | some e in d.deny}

warn_messages(d) := {e.message | some e in d.warn}

# The decision for `inp` under `conf` allows, and nothing was denied or warned.
clean(inp, conf) if {
	d := decide(inp, conf)
	d.allow == true
	d.deny == []
	d.warn == []
}
