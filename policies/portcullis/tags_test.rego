package portcullis_test

test_tag_denied if {
	d := decide(with_image({"tag": "latest"}), scope_config({"deny_tags": ["latest"]}))
	d.allow == false
	d.deny == [{"rule": "tag.denied", "message": "tag \"latest\" is not allowed"}]
}

test_tag_not_denied if {
	clean(base_input, scope_config({"deny_tags": ["latest", "*-dev"]}))
}

test_tag_glob if {
	deny_rules(decide(with_image({"tag": "1.2-dev"}), scope_config({"deny_tags": ["*-dev"]}))) == {"tag.denied"}
}

test_deny_tags_ignored_when_pulled_by_digest if {
	clean(with_image({"tag": null}), scope_config({"deny_tags": ["*"]}))
	clean(replace(base_input, "image", object.remove(base_input.image, ["tag"])), scope_config({"deny_tags": ["*"]}))
}

test_digest_required_denies_tag if {
	d := decide(base_input, scope_config({"require_digest": true}))
	d.deny == [{"rule": "digest.required", "message": "image must be pulled by digest, not by tag \"v1\""}]
}

test_digest_required_allows_digest if {
	clean(with_image({"tag": null}), scope_config({"require_digest": true}))
	clean(with_image({"tag": ""}), scope_config({"require_digest": true}))
}

test_digest_not_required_by_default if {
	clean(base_input, base_config)
}
