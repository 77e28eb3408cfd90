"""Scale-out: state that follows sharded parameters, ZeRO-1, flat trees and the bound on
steps in flight."""
