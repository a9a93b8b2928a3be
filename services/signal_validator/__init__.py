"""Signal validator: raw signals in, validated or rejected signals out."""
