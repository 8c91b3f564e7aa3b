"""ACME issuance: the asynchronous client and the order flow (named so it cannot shadow `acme`)."""
