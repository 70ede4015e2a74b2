# Tag rules of the matching scope: tag.denied and digest.required. Manifest requests only.
package portcullis

# tag.denied: scope.deny_tags are globs on image.tag. Pulls by digest have no tag and are not affected.
violations contains {"rule": "tag.denied", "message": msg} if {
	is_manifest_request
	glob_any(object.get(scope, "deny_tags", []), tag)
	msg := concat("", ["tag ", q(tag), " is not allowed"])
}

# digest.required: scope.require_digest = true denies pulls by tag.
violations contains {"rule": "digest.required", "message": msg} if {
	is_manifest_request
	object.get(scope, "require_digest", false) == true
	msg := concat("", ["image must be pulled by digest, not by tag ", q(tag)])
}
