//! `defacto._native`: the one native function of the Python package. It runs a `defacto`
//! command line in-process (`defacto_jobs::api::call`) with the GIL released and returns what
//! the command printed; a failed command raises `NativeError(kind, message, details)`, which
//! the pure-Python layer turns into the seed's exception classes.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

create_exception!(
    _native,
    NativeError,
    PyException,
    "A defacto error: args are (kind, message, details)."
);

/// Runs `defacto ARGS...` and returns `(status, stdout, arrow)`: the exit status the binary
/// would have had, its stdout as bytes, and — with `arrow=True` — the rows of `table` / `query`
/// as Arrow IPC stream bytes (or None).
#[pyfunction]
#[pyo3(signature = (args, arrow = false))]
fn call<'py>(
    py: Python<'py>,
    args: Vec<String>,
    arrow: bool,
) -> PyResult<(i32, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>)> {
    let result = py.detach(|| defacto_jobs::api::call(&args, arrow));
    match result {
        Ok(out) => Ok((
            out.status,
            PyBytes::new(py, &out.stdout),
            out.arrow.map(|b| PyBytes::new(py, &b)),
        )),
        Err(e) => Err(NativeError::new_err((
            defacto_jobs::api::error_kind(&e),
            defacto_jobs::api::error_message(&e),
            defacto_jobs::api::error_details(&e),
        ))),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(call, m)?)?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    Ok(())
}
