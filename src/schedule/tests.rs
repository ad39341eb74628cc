use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn cron(expr: &str, tz: &str) -> Schedule {
    Schedule {
        timezone: parse_timezone(tz).expect("zone"),
        ..Schedule::new(parse_cron(expr).expect("cron"))
    }
}

/// The next `n` fires after `from`.
fn fires(s: &Schedule, from: &str, n: usize) -> Vec<String> {
    let mut at = utc(from);
    let mut out = Vec::new();
    for _ in 0..n {
        match s.next_after(at, at) {
            Some(next) => {
                out.push(next.to_rfc3339());
                at = next;
            }
            None => break,
        }
    }
    out
}

#[test]
fn day_of_month_and_day_of_week_are_ored_as_cron_does() {
    // The 13th, or a Friday: 2026-11-06 is a Friday, the 13th is one too,
    // and 2026-12-13 is a Sunday.
    let s = cron("0 0 13 * 5", "UTC");
    assert_eq!(
        fires(&s, "2026-11-01T00:00:00Z", 7),
        [
            "2026-11-06T00:00:00+00:00",
            "2026-11-13T00:00:00+00:00",
            "2026-11-20T00:00:00+00:00",
            "2026-11-27T00:00:00+00:00",
            "2026-12-04T00:00:00+00:00",
            "2026-12-11T00:00:00+00:00",
            "2026-12-13T00:00:00+00:00",
        ]
    );
}

#[test]
fn sunday_is_0_and_7_and_names_work() {
    let from = "2026-11-02T00:00:00Z"; // a Monday
    let sunday = ["2026-11-08T12:00:00+00:00"];
    assert_eq!(fires(&cron("0 12 * * 0", "UTC"), from, 1), sunday);
    assert_eq!(fires(&cron("0 12 * * 7", "UTC"), from, 1), sunday);
    assert_eq!(fires(&cron("0 12 * * sun", "UTC"), from, 1), sunday);
    assert_eq!(
        fires(&cron("30 9 * * mon-fri", "UTC"), "2026-11-06T10:00:00Z", 2),
        ["2026-11-09T09:30:00+00:00", "2026-11-10T09:30:00+00:00"],
        "Friday after 9:30, then Monday and Tuesday"
    );
    assert_eq!(
        fires(&cron("0 0 1 jan *", "UTC"), from, 1),
        ["2027-01-01T00:00:00+00:00"]
    );
    assert_eq!(
        fires(&cron("@daily", "UTC"), "2026-11-02T05:00:00Z", 1),
        ["2026-11-03T00:00:00+00:00"]
    );
}

#[test]
fn month_ends_skip_the_months_without_the_day() {
    let s = cron("0 6 31 * *", "UTC");
    assert_eq!(
        fires(&s, "2027-01-31T07:00:00Z", 2),
        ["2027-03-31T06:00:00+00:00", "2027-05-31T06:00:00+00:00"]
    );
    let feb29 = cron("0 0 29 2 *", "UTC");
    assert_eq!(
        fires(&feb29, "2026-03-01T00:00:00Z", 1),
        ["2028-02-29T00:00:00+00:00"]
    );
}

#[test]
fn daylight_saving_in_a_named_zone() {
    // Europe/Paris: 2026-03-29 02:00 jumps to 03:00; 2026-10-25 03:00 goes
    // back to 02:00.
    let s = cron("30 2 * * *", "Europe/Paris");
    let spring = fires(&s, "2026-03-28T12:00:00Z", 2);
    // 02:30 on the 29th does not exist: it fires once that day, at 03:00 CEST.
    assert_eq!(
        spring,
        ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
    );
    let autumn = fires(&s, "2026-10-24T12:00:00Z", 2);
    // 02:30 happens twice on the 25th: it fires once.
    assert_eq!(
        autumn,
        ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
    );
    // An hourly cron keeps firing through both changes, once an hour.
    let hourly = cron("0 * * * *", "Europe/Paris");
    let through = fires(&hourly, "2026-10-24T23:30:00Z", 4);
    assert_eq!(
        through,
        [
            "2026-10-25T00:00:00+00:00",
            "2026-10-25T01:00:00+00:00",
            "2026-10-25T02:00:00+00:00",
            "2026-10-25T03:00:00+00:00"
        ]
    );
}

#[test]
fn intervals_keep_their_phase_from_the_anchor_and_until_ends_them() {
    let mut s = Schedule::new(Rule::Every(Duration::from_secs(30)));
    let anchor = utc("2026-11-29T10:00:00Z");
    assert_eq!(
        s.next_after(utc("2026-11-29T09:00:00Z"), anchor),
        Some(anchor)
    );
    assert_eq!(
        s.next_after(utc("2026-11-29T10:01:10Z"), anchor),
        Some(utc("2026-11-29T10:01:30Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-11-29T10:01:30Z"), anchor),
        Some(utc("2026-11-29T10:02:00Z")),
        "strictly after"
    );
    s.until = Some(utc("2026-11-29T10:01:45Z"));
    assert_eq!(s.next_after(utc("2026-11-29T10:01:30Z"), anchor), None);
}

#[test]
fn bad_expressions_and_zones_say_what_is_wrong() {
    let e = parse_cron("* * * *").err().unwrap_or_default();
    assert!(e.contains("has 4 fields; it needs 5"), "{e}");
    let e = parse_cron("61 * * * *").err().unwrap_or_default();
    assert!(e.contains("cron \"61 * * * *\""), "{e}");
    let e = parse_cron("* * * * * *").err().unwrap_or_default();
    assert!(e.contains("has 6 fields"), "{e}");
    let e = parse_timezone("Mars/Olympus").err().unwrap_or_default();
    assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
    assert_eq!(parse_timezone("utc"), Ok(Tz::UTC));
    assert_eq!(parse_timezone("europe/paris"), Ok(Tz::Europe__Paris));
}
