"""Studies beside the vrd_d2 library: they import it, never the other way round."""
