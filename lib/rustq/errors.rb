# frozen_string_literal: true

module Rustq
  # Everything rustq raises, apart from refused pushes, is a Rustq::Error.
  class Error < StandardError; end

  # A bad Redis URL, CA file or wire version. Raised by Rustq.configure, before any push.
  class ConfigurationError < Error; end

  # Redis could not be reached, dropped the connection or did not answer in time.
  class ConnectionError < Error; end

  # Redis answered a command with an error (READONLY, OOM, WRONGTYPE, ...).
  class CommandError < Error; end

  # `rustq-worker`'s flags or config file are wrong (or --help/--version was asked for): the
  # message is what to print, `status` the exit code (0 for help and version, else 2).
  class UsageError < Error
    def status
      @status || 2
    end
  end

  # A job payload names a constant that is not a job class (`Kernel`, `File`, a model): the
  # worker refuses to touch it, and the job goes to the dead set.
  class NotAJobClass < Error; end

  # Raised by rustq-worker in a job's thread once the engine has given up on the job (it went
  # over `--job-timeout` and is retried, or the shutdown timeout passed and it is back on its
  # queue), so the thread is free for the next job. An Exception, not a StandardError, so a
  # job's `rescue => e` does not swallow it.
  class JobTimeout < ::Exception; end # rubocop:disable Lint/InheritException

  # A push Sidekiq would refuse, with Sidekiq's own message; nothing was written.
  # An ArgumentError, as Sidekiq raises, so existing `rescue ArgumentError` keeps working.
  class InvalidJob < ::ArgumentError; end
end

module Rustq
  # A unique job pushed while a job with the same class, queue and arguments holds its lock, by a
  # class that asks to be told (`rustq_options unique_for: 600, unique_conflict: :raise`); by
  # default such a push returns nil.
  class NotUnique < Error; end
end
