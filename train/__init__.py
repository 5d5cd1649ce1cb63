"""The train stage: fit small bridges (CDT, IsoFormer, CDBridge, Bio-DTA) from caches alone."""
