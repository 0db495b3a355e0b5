"""tidelog client SDK."""
