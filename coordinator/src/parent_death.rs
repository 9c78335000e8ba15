//! Child processes that die with their parent: `mirrorplay local`'s workers must not outlive a
//! `local` that was SIGKILLed (they would retry forever and keep writing into the output). On
//! Linux the child asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), set
//! between fork and exec. Elsewhere nothing is set.

/// Makes the child of `command` receive SIGKILL when this process (the thread that spawns it:
/// `local` spawns from the thread that runs its whole command) dies.
pub fn kill_with_parent(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpid is async-signal-safe.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before the call above: nothing would signal us.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the parent process has exited"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}
