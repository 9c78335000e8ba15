//! Parity with independent implementations, from committed fixtures (see the scripts named in
//! each test).
