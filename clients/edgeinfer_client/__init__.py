"""edgeinfer client library placeholder (filled in below)."""
