# Exceptions: config.exceptions turn deny entries into warn entries.
#
# An exception applies to the image when one of its `images` globs matches "<registry>/<repository>" or one of
# its `digests` equals image.digest, or, for a child manifest decided under an admitted index, the digest of that
# index (image.parent.digest) or of the admitted root (image.root.digest): an index commits to its children's digests,
# so an exception for a multi-platform image covers its platforms. It must also be unexpired (`expires` is required, RFC3339, later than input.now).
# It covers the deny entries whose rule id matches one of its `rules` globs (default ["*"] = every rule), except
# the client identity rules (client.*).
# When several exceptions cover an entry, the first one in config order is named in the message.
package portcullis

exceptions := [e | some e in object.get(cfg, "exceptions", []); is_object(e)]

exception_matches_image(e) if glob_any(object.get(e, "images", []), image_ref)

# The digests an exception may name for this image: its own, and those of the index and root it was admitted under.
image_digests contains d if {
	d := img.digest
	is_string(d)
}

image_digests contains d if {
	d := object.get(object.get(img, "parent", {}), "digest", null)
	is_string(d)
}

image_digests contains d if {
	d := object.get(object.get(img, "root", {}), "digest", null)
	is_string(d)
}

exception_matches_image(e) if {
	some d in object.get(e, "digests", [])
	d in image_digests
}

active_exceptions contains i if {
	some i, e in exceptions
	unexpired(e)
	exception_matches_image(e)
}

exception_for(rule) := min({i | some i in active_exceptions; glob_any(object.get(exceptions[i], "rules", ["*"]), rule)})

# Client identity rules (client.*) are access control: no exception relaxes them.
excepted contains v if {
	some v in violations
	not startswith(v.rule, "client.")
	exception_for(v.rule)
}

excepted_warnings contains {"rule": v.rule, "message": msg} if {
	some v in excepted
	e := exceptions[exception_for(v.rule)]
	msg := concat("", [
		v.message, " (excepted by ", object.get(e, "owner", "<unknown>"), " until ", e.expires, ": ",
		object.get(e, "reason", "no reason given"), ")",
	])
}
