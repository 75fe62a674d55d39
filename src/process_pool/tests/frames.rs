//! The wire format (with property tests over arbitrary bytes) and the receives the worker and the
//! joiners wait in.

use super::*;

fn sample_messages() -> (Vec<ToWorker<'static>>, Vec<FromWorker>) {
    let call = Call {
        task: "t".into(),
        payload: Blob(vec![1, 2, 3].into()),
    };
    let to = vec![
        ToWorker::Hello {
            version: 1,
            init: None,
        },
        ToWorker::Hello {
            version: 1,
            init: Some(call.clone()),
        },
        ToWorker::Run { id: u64::MAX, call },
        ToWorker::Shutdown,
    ];
    let from = vec![
        FromWorker::Ready { version: 1 },
        FromWorker::InitFailed("x".into()),
        FromWorker::Started { id: 7, at: 3 },
        FromWorker::Finished {
            id: 7,
            ended_at: 1000,
            outcome: WireOutcome::Ok(Bytes(vec![0; 300])),
        },
        FromWorker::Finished {
            id: 8,
            ended_at: 0,
            outcome: WireOutcome::Err {
                payload: Bytes(vec![9]),
                display: "e".into(),
            },
        },
        FromWorker::Finished {
            id: 9,
            ended_at: 3000,
            outcome: WireOutcome::Panicked("p".into()),
        },
        FromWorker::Finished {
            id: 9,
            ended_at: 0,
            outcome: WireOutcome::UnknownTask("u".into()),
        },
        FromWorker::Finished {
            id: 9,
            ended_at: 5000,
            outcome: WireOutcome::DecodeFailed("d".into()),
        },
        FromWorker::Finished {
            id: 9,
            ended_at: 0,
            outcome: WireOutcome::EncodeFailed("e".into()),
        },
    ];
    (to, from)
}

/// A large frame is received into a buffer of its own size, not one grown to twice that by a
/// receive asking for room past its end, and the buffer shrinks once the frame is taken out.
#[test]
fn a_large_frame_is_received_into_a_buffer_of_its_size() {
    use std::io::Write;
    use std::os::fd::AsFd;
    let _watchdog = test_watchdog("a_large_frame_is_received_into_a_buffer_of_its_size");
    let msg = FromWorker::Finished {
        id: 1,
        outcome: WireOutcome::Ok(Bytes(vec![5; 1 << 20])),
        ended_at: 1,
    };
    let frame = wire::encode_frame(&msg, 4 << 20).unwrap();
    let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let sent = frame.clone();
    let writer = std::thread::spawn(move || {
        tx.write_all(&sent).unwrap();
        tx // kept open: the reader finds nothing more, not the end of the stream
    });
    let mut r = FrameReader::new(4 << 20);
    let len = loop {
        if let Some(len) = r.whole_frame().unwrap() {
            break len;
        }
        // Blocking, as a worker receives.
        let (n, _) = r
            .recv(rx.as_fd(), crate::process_pool::sys::Wait::Yes)
            .unwrap();
        assert!(n > 0, "end of stream before the frame");
    };
    let _tx = writer.join().unwrap();
    assert_eq!(len, frame.len());
    // A reader that looks for more behind the whole frame (nothing is there).
    assert!(r
        .recv(rx.as_fd(), crate::process_pool::sys::Wait::No)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));
    assert!(
        r.capacity() < frame.len() + (64 << 10),
        "a frame of {} bytes was received into {} bytes",
        frame.len(),
        r.capacity()
    );
    assert_eq!(r.decode::<FromWorker>(len).unwrap(), msg);
    r.consume(len);
    assert!(r.capacity() <= 64 << 10, "{} bytes kept", r.capacity());
}

/// The worker reads a request in place: the task's name and input borrow the received frame.
#[test]
fn a_request_is_decoded_without_copying_its_name_or_input() {
    let msg = ToWorker::Run {
        id: 5,
        call: Call {
            task: "square".into(),
            payload: Blob(vec![7; 100].into()),
        },
    };
    let frame = wire::encode_frame(&msg, 1 << 20).unwrap();
    let mut r = FrameReader::new(1 << 20);
    r.push(&frame);
    let len = r.whole_frame().unwrap().expect("a whole frame");
    let decoded: ToWorker<'_> = r.decode(len).unwrap();
    let ToWorker::Run { id: 5, call } = decoded else {
        panic!("decoded {decoded:?}")
    };
    assert!(matches!(call.task, std::borrow::Cow::Borrowed("square")));
    assert!(matches!(call.payload.0, std::borrow::Cow::Borrowed(b) if b == [7; 100]));
}

#[test]
fn every_message_round_trips() {
    let _watchdog = test_watchdog("every_message_round_trips");
    let (to, from) = sample_messages();
    for m in to {
        let f = wire::encode_frame(&m, 1 << 20).unwrap();
        assert_eq!(
            wire::decode_body::<ToWorker<'_>>(&f[HEADER_LEN..]).unwrap(),
            m
        );
    }
    for m in from {
        let f = wire::encode_frame(&m, 1 << 20).unwrap();
        assert_eq!(
            wire::decode_body::<FromWorker>(&f[HEADER_LEN..]).unwrap(),
            m
        );
    }
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    let _watchdog = test_watchdog("oversized_frame_is_refused_from_its_header_alone");
    let mut r = FrameReader::new(1024);
    r.push(&u32::MAX.to_le_bytes());
    assert_eq!(
        r.next_message::<FromWorker>(),
        Err(FrameError::Oversized {
            len: u32::MAX as usize,
            max: 1024
        })
    );
    assert!(wire::encode_frame(&FromWorker::InitFailed("x".repeat(2000)), 1024).is_err());
}

#[test]
fn trailing_bytes_in_a_frame_are_corrupt() {
    let _watchdog = test_watchdog("trailing_bytes_in_a_frame_are_corrupt");
    let mut f = wire::encode_frame(&FromWorker::Started { id: 1, at: 1 }, 1024).unwrap();
    f.push(0);
    let len = (f.len() - HEADER_LEN) as u32;
    f[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    let mut r = FrameReader::new(1024);
    r.push(&f);
    assert!(matches!(
        r.next_message::<FromWorker>(),
        Err(FrameError::Corrupt(_))
    ));
}

proptest! {
    /// Arbitrary bytes, fed in arbitrary pieces, never panic the reader: each step gives a message,
    /// "need more", or an error.
    #[test]
    fn reader_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(1usize..512, 0..16),
        max in 0usize..8192,
    ) {
        let mut r = FrameReader::new(max);
        let mut rest = &bytes[..];
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let n = (*cut).min(rest.len());
            r.push(&rest[..n]);
            rest = &rest[n..];
            while let Ok(Some(_)) = r.next_message::<FromWorker>() {}
        }
    }

    /// Arbitrary frame bodies decode to a message or an error, for both directions.
    #[test]
    fn decoder_never_panics_on_arbitrary_bodies(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = wire::decode_body::<FromWorker>(&body);
        let _ = wire::decode_body::<ToWorker<'_>>(&body);
    }

    /// Valid frames split anywhere come out whole and in order; a truncated stream yields nothing extra.
    #[test]
    fn frames_survive_any_split(
        picks in proptest::collection::vec(0usize..9, 1..20),
        cuts in proptest::collection::vec(1usize..64, 0..40),
        truncate in 0usize..6, // the shortest frame is 6 bytes: cut into the last one only
    ) {
        let (_, all) = sample_messages();
        let msgs: Vec<FromWorker> = picks.iter().map(|&i| all[i].clone()).collect();
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(wire::encode_frame(m, 4096).unwrap());
        }
        let complete = stream.len();
        stream.truncate(complete.saturating_sub(truncate));
        let mut r = FrameReader::new(4096);
        let mut got = Vec::new();
        let mut rest = &stream[..];
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let n = (*cut).min(rest.len());
            r.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(m) = r.next_message::<FromWorker>().unwrap() {
                got.push(m);
            }
        }
        let expected = if truncate == 0 { msgs.len() } else { msgs.len() - 1 };
        prop_assert_eq!(&got[..], &msgs[..expected]);
    }

    /// A header announcing more than the maximum is refused before any body byte arrives.
    #[test]
    fn oversized_headers_are_refused(len in 1025u32.., max in 0usize..1025) {
        let mut r = FrameReader::new(max);
        r.push(&len.to_le_bytes());
        let refused = matches!(r.next_message::<FromWorker>(), Err(FrameError::Oversized { .. }));
        prop_assert!(refused);
    }
}

/// A joiner waits for its reply in a receive that consumes nothing and ends with the socket's
/// receive timeout: it sees data and the end of stream without taking them, and nothing past the
/// timeout.
#[test]
fn a_wait_for_data_ends_with_data_the_end_of_stream_or_the_receive_timeout() {
    use std::io::Write;
    use std::os::fd::AsFd;
    let _watchdog =
        test_watchdog("a_wait_for_data_ends_with_data_the_end_of_stream_or_the_receive_timeout");
    let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
    crate::process_pool::sys::set_recv_timeout(rx.as_fd(), Duration::from_millis(1)).unwrap();
    // Nothing comes: false once the timeout passes (a tick or so; bounded loosely for a busy machine).
    let started = std::time::Instant::now();
    assert!(!crate::process_pool::sys::wait_for_data(rx.as_fd()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Data: true, and the data is still there for the reader.
    tx.write_all(b"abc").unwrap();
    assert!(crate::process_pool::sys::wait_for_data(rx.as_fd()));
    let mut r = FrameReader::new(1 << 10);
    assert_eq!(
        r.recv(rx.as_fd(), crate::process_pool::sys::Wait::No)
            .unwrap()
            .0,
        3,
        "the wait consumed what it saw"
    );
    // A wait blocked when data comes is woken by it.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        tx.write_all(b"d").unwrap();
        tx
    });
    let mut woke = false;
    while !woke {
        woke = crate::process_pool::sys::wait_for_data(rx.as_fd());
    }
    drop(writer.join().unwrap());
    assert_eq!(
        r.recv(rx.as_fd(), crate::process_pool::sys::Wait::No)
            .unwrap()
            .0,
        1
    );
    // The end of stream (the writer is gone): true, and the reader then reads it.
    assert!(crate::process_pool::sys::wait_for_data(rx.as_fd()));
    assert_eq!(
        r.recv(rx.as_fd(), crate::process_pool::sys::Wait::No)
            .unwrap()
            .0,
        0
    );
}

/// A receive timeout under a microsecond still times out: a zero `timeval`, which the kernel reads
/// as "no timeout", is never set.
#[test]
fn a_receive_timeout_under_a_microsecond_still_ends_the_wait() {
    use std::os::fd::AsFd;
    let _watchdog = test_watchdog("a_receive_timeout_under_a_microsecond_still_ends_the_wait");
    let (_tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
    crate::process_pool::sys::set_recv_timeout(rx.as_fd(), Duration::from_nanos(500)).unwrap();
    assert!(!crate::process_pool::sys::wait_for_data(rx.as_fd()));
}
