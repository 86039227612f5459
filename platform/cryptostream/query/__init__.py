"""The query service: stateless HTTP reads and live push over the processor's Redis views.

It only ever reads the layout of :mod:`cryptostream.core.keys` (and subscribes to its pub/sub
channel); it never imports a Kafka client.
"""
