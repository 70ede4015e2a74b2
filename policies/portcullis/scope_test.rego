package portcullis_test

test_base_input_is_allowed if {
	d := decide(base_input, base_config)
	d == {"allow": true, "deny": [], "warn": [], "scope": "acme", "mode": "enforce"}
}

# --- input.invalid

test_input_wrong_version_denied if {
	d := decide(object.union(base_input, {"version": 2}), base_config)
	d.allow == false
	deny_rules(d) == {"input.invalid"}
}

test_input_without_image_denied if {
	d := decide(object.remove(base_input, ["image"]), base_config)
	"input.invalid" in deny_rules(d)
	"input has no image registry or repository" in deny_messages(d)
}

test_empty_input_denied if {
	d := decide({}, {})
	d.allow == false
	"input.invalid" in deny_rules(d)
}

# --- registry.not_allowed

test_registry_not_allowed if {
	d := decide(with_image({"registry": "quay.io"}), base_config)
	"registry.not_allowed" in deny_rules(d)
	"registry \"quay.io\" is not allowed" in deny_messages(d)
}

test_registry_glob_with_port_allowed if {
	conf := object.union(base_config, {"scopes": [object.union(base_scope, {"images": ["127.0.0.1:*/**"]})]})
	clean(with_image({"registry": "127.0.0.1:5000"}), conf)
}

test_registry_list_absent_allows_any if {
	conf := object.remove(base_config, ["registries"])
	d := decide(with_image({"registry": "quay.io"}), object.union(conf, {"scopes": [object.union(base_scope, {"images": ["**"]})]}))
	d.allow == true
}

test_registry_list_empty_allows_any if {
	conf := {"registries": [], "scopes": [object.union(base_scope, {"images": ["**"]})]}
	decide(with_image({"registry": "quay.io"}), conf).allow == true
}

# --- repository.not_allowed

test_repository_not_allowed if {
	conf := object.union(base_config, {"repositories": ["ghcr.io/acme/*"]})
	d := decide(with_image({"repository": "acme/team/api"}), conf)
	deny_rules(d) == {"repository.not_allowed"}
	"repository \"ghcr.io/acme/team/api\" is not allowed" in deny_messages(d)
}

test_repository_allowed if {
	conf := object.union(base_config, {"repositories": ["docker.io/library/*", "ghcr.io/acme/*"]})
	clean(base_input, conf)
}

# --- glob semantics: '/' delimits, * and ? stay inside one component, ** crosses components

test_glob_star_does_not_cross_slash if {
	not glob_matches("ghcr.io/acme/*", "ghcr.io/acme/team/api")
	glob_matches("ghcr.io/acme/*", "ghcr.io/acme/api")
}

test_glob_double_star_crosses_slash if {
	glob_matches("ghcr.io/acme/**", "ghcr.io/acme/team/api")
	glob_matches("ghcr.io/**", "ghcr.io/acme/api")
	not glob_matches("ghcr.io/acme/**", "ghcr.io/acme")
	not glob_matches("ghcr.io/acme/**", "ghcr.io/acme-evil/api")
}

test_glob_star_crosses_dots if {
	glob_matches("*.example.com/*", "eu.registry.example.com/app")
	glob_matches("docker.io/library/*", "docker.io/library/nginx")
	glob_matches("ghcr.io/acme/api-?", "ghcr.io/acme/api-2")
	glob_matches("ghcr.io/acme/{api,web}", "ghcr.io/acme/web")
}

glob_matches(pattern, ref) if {
	parts := split(ref, "/")
	conf := {"scopes": [{"name": "s", "images": [pattern]}]}
	inp := with_image({"registry": parts[0], "repository": concat("/", array.slice(parts, 1, count(parts)))})
	decide(inp, conf).scope == "s"
}

# --- scopes: the first matching scope decides

test_first_matching_scope_wins if {
	conf := {"scopes": [
		{"name": "web-only", "images": ["ghcr.io/acme/web"], "deny_tags": ["v1"]},
		{"name": "acme-lenient", "images": ["ghcr.io/acme/**"], "mode": "warn"},
		{"name": "acme-strict", "images": ["ghcr.io/acme/**"], "deny_tags": ["v1"]},
	]}
	d := decide(base_input, conf)
	d.scope == "acme-lenient"
	d.mode == "warn"
	d.allow == true
	d2 := decide(with_image({"repository": "acme/web"}), conf)
	d2.scope == "web-only"
	deny_rules(d2) == {"tag.denied"}
}

test_scope_without_name_is_named_by_index if {
	conf := {"scopes": [{"images": ["docker.io/**"]}, {"images": ["ghcr.io/**"]}]}
	decide(base_input, conf).scope == "scopes[1]"
}

test_mode_defaults if {
	decide(base_input, {"scopes": [{"name": "a", "images": ["**"]}]}).mode == "enforce"
	decide(base_input, {"mode": "dry-run", "scopes": [{"name": "a", "images": ["**"]}]}).mode == "dry-run"
	decide(base_input, {"mode": "warn", "scopes": [{"name": "a", "images": ["**"], "mode": "enforce"}]}).mode == "enforce"
	decide(base_input, {"scopes": [{"name": "a", "images": ["**"], "mode": "bogus"}]}).mode == "enforce"
}

# The policy reports the mode but never flips allow itself: the proxy applies warn and dry-run.
test_warn_mode_still_reports_deny if {
	d := decide(with_image({"tag": "latest"}), scope_config({"mode": "warn", "deny_tags": ["latest"]}))
	d.mode == "warn"
	d.allow == false
	deny_rules(d) == {"tag.denied"}
}

# --- scope.no_match

test_no_match_default_deny if {
	d := decide(with_image({"registry": "docker.io", "repository": "library/nginx"}), base_config)
	d.allow == false
	d.scope == null
	d.mode == "enforce"
	deny_rules(d) == {"scope.no_match"}
	"no policy scope covers \"docker.io/library/nginx\"" in deny_messages(d)
}

test_no_match_explicit_deny if {
	conf := object.union(base_config, {"no_match": "deny"})
	deny_rules(decide(with_image({"repository": "other/x"}), conf)) == {"scope.no_match"}
}

test_no_match_warn if {
	conf := object.union(base_config, {"no_match": "warn"})
	d := decide(with_image({"repository": "other/x"}), conf)
	d.allow == true
	warn_rules(d) == {"scope.no_match"}
	d.scope == null
}

test_no_match_allow if {
	conf := object.union(base_config, {"no_match": "allow"})
	clean(with_image({"repository": "other/x"}), conf)
}

test_no_match_unknown_value_denies if {
	conf := object.union(base_config, {"no_match": "maybe"})
	deny_rules(decide(with_image({"repository": "other/x"}), conf)) == {"scope.no_match"}
}

test_empty_config_denies_everything if {
	d := decide(base_input, {})
	deny_rules(d) == {"scope.no_match"}
}

test_no_config_at_all_denies if {
	d := data.portcullis.decision with input as base_input
	d.allow == false
}

# --- accessories: only registry, repository and coverage rules apply

test_accessory_skips_content_rules if {
	inp := object.union(with_image({"tag": "sha256-1111.sig"}), {
		"request": {"kind": "accessory", "method": "GET"},
		"signatures": {"status": "none", "verified": [], "rejected": []},
		"scan": {"status": "missing"},
	})
	clean(inp, scope_config({"require_digest": true, "deny_tags": ["sha256-*"]}))
}

test_accessory_still_checks_registry if {
	inp := object.union(with_image({"registry": "quay.io"}), {"request": {"kind": "accessory", "method": "GET"}})
	"registry.not_allowed" in deny_rules(decide(inp, base_config))
}

test_invalid_global_mode_falls_back_to_enforce if {
	decide(base_input, {"mode": "yolo", "scopes": [{"name": "a", "images": ["**"]}]}).mode == "enforce"
}

test_registry_value_quoted_when_missing if {
	d := decide(replace(base_input, "image", {"repository": "x"}), base_config)
	"registry \"\" is not allowed" in deny_messages(d)
}

# --- repository-level requests (tag lists, referrers lists): no digest, no evidence, repository rules only

repository_request(kind, registry, repository) := {
	"version": 1, "now": now,
	"request": {"kind": kind, "method": "GET", "client": {"ip": "10.0.0.7"}, "routing": "prefix"},
	"image": {"registry": registry, "repository": repository, "tag": null, "digest": null, "media_type": null, "platforms": [], "labels": {}},
	"signatures": {"status": "not_configured", "verified": [], "rejected": []},
	"scan": {"status": "not_configured"},
}

test_tags_of_a_covered_repository_allowed_without_evidence if {
	every kind in ["tags", "referrers"] {
		clean(repository_request(kind, "ghcr.io", "acme/api"), scope_config({"require_digest": true, "deny_tags": ["*"]}))
	}
}

test_tags_of_an_uncovered_repository_denied if {
	every kind in ["tags", "referrers"] {
		deny_rules(decide(repository_request(kind, "ghcr.io", "other/api"), base_config)) == {"scope.no_match"}
	}
}

test_tags_of_a_disallowed_registry_denied if {
	"registry.not_allowed" in deny_rules(decide(repository_request("tags", "quay.io", "acme/api"), object.union(base_config, {"scopes": [{"images": ["**"]}]})))
}

test_unknown_kind_is_a_manifest_request if {
	inp := object.union(with_sigs({"status": "none", "verified": [], "rejected": []}), {"request": {"kind": "blob", "method": "GET"}})
	"signature.required" in deny_rules(decide(inp, base_config))
}
